//! Login machinery: sealed cookies and redirect-target checks.

pub mod oidc;
pub mod redirect;
pub mod seal;
pub mod session;
