//! Managing local accounts: the operations of `gatehouse users ...` ([`ops`]), how they print
//! ([`render`]), and how the command reaches the store, directly or through a running server's
//! admin API ([`cli`]).

pub mod cli;
pub mod ops;
pub mod render;
