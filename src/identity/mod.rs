//! Who a request is from, once a session or a bearer token has been checked, and the headers
//! that tell the app.

pub mod access;
pub mod assertion;
pub mod claims;
pub mod headers;
pub mod jit;
pub mod signed_header;

pub use crate::store::sessions::Identity;

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
