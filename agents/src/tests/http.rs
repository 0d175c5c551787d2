//! PLACEHOLDER: replaced by the http load generator.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::TestError;
use crate::spec::{TestResult, TestSpec};

pub fn run(_spec: &TestSpec, _target: SocketAddr, _cancel: &CancellationToken) -> Result<TestResult, TestError> {
    Err(TestError::Failed("http is not built yet".into()))
}
