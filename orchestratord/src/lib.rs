//! orchestratord: per-user isolated boxes for a homelab.
//!
//! Layers (see DESIGN.md): `api -> service -> {store, runtime}`, everyone -> `policy`.
//! `api` never calls `runtime`; `runtime` never reads the database; SQL lives in `store`.

pub mod api;
pub mod runtime;
pub mod service;
pub mod store;

/// Helpers for tests (unit and black-box); not an API.
#[doc(hidden)]
pub mod testing;
