//! PLACEHOLDER: replaced by the udp_rr load generator.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::TestError;
use crate::spec::{TestResult, TestSpec};

pub fn run(_spec: &TestSpec, _target: SocketAddr, _cancel: &CancellationToken) -> Result<TestResult, TestError> {
    Err(TestError::Failed("udp_rr is not built yet".into()))
}
