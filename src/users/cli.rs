//! `gatehouse users ...`: runs an operation on the store file when no server holds it, else
//! sends it to the running server's admin API (`POST /api/users` on the admin listener, with
//! the `[admin]` token), so the server's live sessions follow the change at once.

use std::net::SocketAddr;
use std::time::Duration;

use super::ops::{apply_offline, execute, OpError, OpOutput, UserOp};
use crate::config::Config;
use crate::store::{Store, StoreError};

/// The admin API path.
pub const API_PATH: &str = "/api/users";

/// Runs `op` for the store `config` names.
pub fn run(config: &Config, op: &UserOp) -> Result<OpOutput, OpError> {
    match Store::open_configured(config) {
        Ok(store) => {
            // Offline (no server holds the store): the record times are the system's.
            let now = crate::clock::Clock::system().now();
            let (output, effect) = execute(&store, op, now)?;
            apply_offline(&store, &effect)?;
            Ok(output)
        }
        Err(StoreError::Locked(path)) => remote(config, op).map_err(|e| match e {
            OpError::Remote(why) => OpError::Remote(format!(
                "{} is held by a running gatehouse, and its admin API could not be used: {why}",
                path.display()
            )),
            other => other,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The address to reach the admin listener at: a wildcard listen address means loopback.
fn admin_target(listen: SocketAddr) -> SocketAddr {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(if listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    target
}

fn remote(config: &Config, op: &UserOp) -> Result<OpOutput, OpError> {
    let token = config.admin.token.as_ref().ok_or_else(|| {
        OpError::Remote("no [admin] token is configured (set the same one for the server)".into())
    })?;
    let url = format!(
        "http://{}{API_PATH}",
        admin_target(config.server.admin_listen)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OpError::Remote(e.to_string()))?;
    runtime.block_on(async {
        let client = openidconnect::reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .map_err(|e| OpError::Remote(e.to_string()))?;
        let response = client
            .post(&url)
            .bearer_auth(&token.0)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(op).map_err(|e| OpError::Remote(e.to_string()))?)
            .send()
            .await
            .map_err(|e| OpError::Remote(format!("{url}: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| OpError::Remote(e.to_string()))?;
        if status.is_success() {
            serde_json::from_slice(&body)
                .map_err(|e| OpError::Remote(format!("unreadable answer: {e}")))
        } else {
            Err(
                serde_json::from_slice::<OpError>(&body).unwrap_or_else(|_| {
                    OpError::Remote(format!(
                        "{url} answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    ))
                }),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_admin_address_is_reached_on_loopback() {
        let t = admin_target("0.0.0.0:9090".parse().unwrap());
        assert_eq!(t.to_string(), "127.0.0.1:9090");
        let t = admin_target("10.1.2.3:9090".parse().unwrap());
        assert_eq!(t.to_string(), "10.1.2.3:9090");
    }
}
