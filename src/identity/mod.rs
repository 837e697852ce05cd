//! Who a request is from, once a session or a bearer token has been checked, and the headers
//! that tell the app.

pub mod claims;
pub mod headers;

use serde::{Deserialize, Serialize};

/// The identity of a signed-in user, as the app will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The connection (IdP) that vouched for the user.
    pub connection: String,
    /// The IdP's `sub`.
    pub subject: String,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Identity {
    /// The value of the user header: the username, else the email, else the subject.
    pub fn user(&self) -> &str {
        self.username
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.subject)
    }
}
