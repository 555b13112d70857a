//! Waiting for convergence without fixed sleeps: testkit's patience
//! (`SWITCHYARD_TEST_PATIENCE_MS`, default 10 s) and its [`poll`], which the
//! suite reports as evidence rather than panicking on.

pub use testkit::patience::{PATIENCE_ENV, Waited, patience, poll, scaled};
