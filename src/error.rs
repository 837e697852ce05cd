//! The errors a request can end in, and the one place they become HTTP statuses.

use http::{HeaderName, StatusCode};

use crate::uri::host::HostError;
use crate::uri::path::PathError;

/// Why Gatehouse answered a request itself instead of the app.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    #[error("malformed request")]
    BadRequest,
    #[error("bad host: {0}")]
    BadHost(#[from] HostError),
    #[error("the request body ended early")]
    BodyAborted,
    #[error("the client sent the request body too slowly")]
    ClientTimeout,
    #[error("no upstream serves this host and path")]
    NoUpstream,
    #[error("no such endpoint")]
    NotFound,
    #[error("authentication required")]
    Unauthenticated,
    #[error("upstream unavailable ({0})")]
    UpstreamUnavailable(&'static str),
    #[error("upstream timed out ({0})")]
    UpstreamTimeout(&'static str),
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The shared store (PostgreSQL) has not answered for longer than `offline_grace`, or a
    /// login needs it now: fail closed.
    #[error("the session store is unavailable")]
    StoreUnavailable,
    #[error("forward-auth: {0}")]
    ForwardAuth(#[from] ForwardAuthRefusal),
}

/// Why a forward-auth call was not answered about a request (each is logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardAuthRefusal {
    #[error("the caller {0} is not in [headers] trusted_proxies")]
    UntrustedPeer(String),
    #[error("no {0} header: the front proxy must say which request it serves")]
    Missing(HeaderName),
    #[error("{0} comes more than once")]
    Repeated(HeaderName),
    #[error("{0} is not a usable value")]
    Malformed(HeaderName),
    #[error("{other} disagrees with {configured}: one of them was sent by the client")]
    Conflict {
        configured: HeaderName,
        other: &'static str,
    },
}

impl ForwardAuthRefusal {
    /// The `gatehouse_forward_auth_refused_total` reason.
    pub fn label(&self) -> crate::metrics::ForwardAuthReason {
        use crate::metrics::ForwardAuthReason as Reason;
        match self {
            ForwardAuthRefusal::UntrustedPeer(_) => Reason::UntrustedPeer,
            ForwardAuthRefusal::Missing(_) => Reason::Missing,
            ForwardAuthRefusal::Repeated(_) => Reason::Repeated,
            ForwardAuthRefusal::Malformed(_) => Reason::Malformed,
            ForwardAuthRefusal::Conflict { .. } => Reason::Conflict,
        }
    }
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::BadPath(_)
            | RequestError::BadRequest
            | RequestError::BadHost(_)
            | RequestError::BodyAborted => StatusCode::BAD_REQUEST,
            RequestError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            RequestError::NoUpstream | RequestError::NotFound => StatusCode::NOT_FOUND,
            RequestError::Unauthenticated => StatusCode::UNAUTHORIZED,
            RequestError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            RequestError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            RequestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RequestError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::ForwardAuth(ForwardAuthRefusal::UntrustedPeer(_)) => {
                StatusCode::FORBIDDEN
            }
            RequestError::ForwardAuth(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// What the client is told: short, and never the upstream's internals.
    pub fn public_message(&self) -> &'static str {
        match self {
            RequestError::BadPath(_) => "The request path is not allowed.",
            RequestError::BadRequest => "The request is malformed.",
            RequestError::BadHost(_) => "The request does not name a valid host.",
            RequestError::BodyAborted => "The request body was incomplete.",
            RequestError::ClientTimeout => "The request body did not arrive in time.",
            RequestError::NoUpstream | RequestError::NotFound => {
                "Nothing is served at this address."
            }
            RequestError::Unauthenticated => "Sign-in is required.",
            RequestError::UpstreamUnavailable(_) => "The application is not reachable right now.",
            RequestError::UpstreamTimeout(_) => "The application took too long to answer.",
            RequestError::Internal(_) => "Something went wrong in the gateway.",
            RequestError::StoreUnavailable => {
                "Sign-in is unavailable right now (the session store does not answer). Try again in a minute."
            }
            RequestError::ForwardAuth(ForwardAuthRefusal::UntrustedPeer(_)) => {
                "Forward-auth answers configured front proxies only."
            }
            RequestError::ForwardAuth(_) => {
                "The forward-auth request does not say which request it is about."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_the_status_its_meaning_calls_for() {
        assert_eq!(RequestError::BadPath(PathError::Nul).status(), 400);
        assert_eq!(RequestError::NoUpstream.status(), 404);
        assert_eq!(
            RequestError::UpstreamUnavailable("connect_refused").status(),
            502
        );
        assert_eq!(RequestError::UpstreamTimeout("read_timeout").status(), 504);
        assert_eq!(RequestError::BadHost(HostError::Missing).status(), 400);
        assert_eq!(RequestError::BodyAborted.status(), 400);
        assert_eq!(RequestError::ClientTimeout.status(), 408);
    }
}
