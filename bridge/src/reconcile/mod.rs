//! Reconciliation: does DHIS2 hold what Kiungo sent?
//!
//! `kiungo dhis2 reconcile` reads a data set's values for one period back
//! from DHIS2 and compares them, key by key, with the totals Kiungo
//! recomputes from its stored contributions:
//!
//! - **missing**: Kiungo has a total, DHIS2 has no value (a push lost,
//!   or not made yet);
//! - **different**: both have the key with other values (edited by hand
//!   in DHIS2, or a lost push), or DHIS2 still holds a value Kiungo once
//!   pushed and has since withdrawn;
//! - **not from Kiungo**: DHIS2 holds a value Kiungo never produced
//!   (entered by hand). Reported only: Kiungo never touches it.
//!
//! `--repair` marks the missing and different totals for a push: the
//! running service's DHIS2 worker sends them like any other change
//! (retried, parked on refusal), and the repair is written to the audit
//! log. Reading only: without `--repair` nothing changes anywhere.
//!
//! [`schedule`] runs it on a timer and exports the drift as a gauge.

mod cli;
mod compare;
mod render;
mod run;
pub mod schedule;

pub use cli::{Dhis2Action, run as run_cli};
pub use compare::{Drift, DriftKind, Report, compare};
pub use render::{Format, render};
pub use run::{ReconcileError, Request, reconcile};
