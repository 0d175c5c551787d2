//! Run files: `results.json` and `results.csv` (one row per measurement), written by
//! [`store::RunStore`] after every measurement so an interrupted run keeps what it measured,
//! read back by [`load`], and collected across runs by [`history`]. The records themselves
//! are `model`'s.

pub mod history;
pub mod load;
pub mod store;
