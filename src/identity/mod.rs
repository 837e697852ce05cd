//! Who a request is from, once a session or a bearer token has been checked, and the headers
//! that tell the app.

pub mod access;
pub mod assertion;
pub mod claims;
pub mod headers;
pub mod jit;
pub mod signed_header;

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
    /// The local account's id: set when the connection provisions users (JIT).
    #[serde(default)]
    pub user_id: Option<String>,
    /// Local roles (JIT accounts only).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Attributes: the claims the connection keeps, and (JIT) locally set ones.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl Identity {
    /// An identity with only the connection and subject set.
    pub fn new(connection: &str, subject: &str) -> Self {
        Self {
            connection: connection.to_string(),
            subject: subject.to_string(),
            username: None,
            email: None,
            email_verified: false,
            name: None,
            groups: Vec::new(),
            user_id: None,
            roles: Vec::new(),
            attributes: Default::default(),
        }
    }

    /// The value of the user header: the username, else the email, else the subject.
    pub fn user(&self) -> &str {
        self.username
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.subject)
    }
}
