//! Self-test of the OpenID Provider harness (`tests/common/idp.rs`) against the real test
//! IdP, without Gatehouse: a tiny axum app plays the relying party's callback.

#[path = "common/idp.rs"]
mod idp;

use std::net::SocketAddr;

use axum::extract::RawQuery;
use axum::routing::get;
use axum::Router;
use futures_util::FutureExt;
use idp::{client_config, find_form, form_fields, unescape_html, Browser, TestIdp};

const CLIENT_ID: &str = "harness-rp";
const CLIENT_SECRET: &str = "harness-secret";

/// A relying party stand-in whose `/cb` and `/bye` answer 200 with the raw query string.
async fn start_rp() -> SocketAddr {
    let echo_query = |RawQuery(q): RawQuery| async move { q.unwrap_or_default() };
    let app = Router::new()
        .route("/cb", get(echo_query))
        .route("/bye", get(echo_query));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind rp");
    let addr = listener.local_addr().expect("rp addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve rp") });
    addr
}

/// An IdP knowing one client whose redirect URI is the RP's `/cb`. No SHA-256 crate is a
/// direct dependency, so PKCE is switched off for these hand-built authorization requests.
async fn start_idp(rp: SocketAddr) -> TestIdp {
    TestIdp::start(serde_json::json!({
        "pkce_required": false,
        "clients": [client_config(
            CLIENT_ID,
            CLIENT_SECRET,
            vec![format!("http://{rp}/cb")],
            vec![format!("http://{rp}/bye")],
            None,
        )],
    }))
    .await
}

fn auth_url(idp: &TestIdp, rp: SocketAddr) -> String {
    let mut url = reqwest::Url::parse(&idp.url("/auth")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", &format!("http://{rp}/cb"))
        .append_pair("scope", "openid email profile")
        .append_pair("state", "s1")
        .append_pair("nonce", "n1");
    url.to_string()
}

async fn discovery(idp: &TestIdp) -> serde_json::Value {
    Browser::new()
        .client()
        .get(idp.discovery_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The IdP comes up on an ephemeral port and its discovery document names the issuer the
/// harness parsed from the ready line.
#[tokio::test]
async fn the_idp_starts_and_its_discovery_document_names_the_reported_issuer() {
    let idp = TestIdp::start(serde_json::json!({})).await;
    assert_eq!(idp.issuer, format!("http://127.0.0.1:{}", idp.port));
    let doc = discovery(&idp).await;
    assert_eq!(doc["issuer"], idp.issuer.as_str());
    assert!(
        idp.stderr().contains("listening on"),
        "stderr: {}",
        idp.stderr()
    );
}

/// `Browser::follow` walks /auth → login form → credentials posted → consent → the RP's
/// callback, which receives a code and the original state.
#[tokio::test]
async fn alice_signs_in_and_lands_on_the_callback_with_a_code_and_the_state() {
    let rp = start_rp().await;
    let idp = start_idp(rp).await;
    let browser = Browser::new();

    let journey = browser
        .follow(&auth_url(&idp, rp), Some(("alice", "alice-pw")))
        .await;

    assert_eq!(journey.status, 200, "{journey:#?}");
    assert!(
        journey.url.starts_with(&format!("http://{rp}/cb?")),
        "{journey:#?}"
    );
    assert!(journey.body.contains("code="), "{}", journey.body);
    assert!(journey.body.contains("state=s1"), "{}", journey.body);
    assert_eq!(journey.query_param("state").as_deref(), Some("s1"));
    assert_eq!(
        journey.query_param("iss").as_deref(),
        Some(idp.issuer.as_str())
    );
    assert!(
        journey
            .hops
            .iter()
            .any(|(status, url)| *status == 200 && url.contains("/interaction/")),
        "the login form was never shown: {:#?}",
        journey.hops
    );
    assert!(
        journey.hops.iter().any(|(_, url)| url.ends_with("/login")),
        "the login form was never posted: {:#?}",
        journey.hops
    );
    let session = browser.cookie_header(&idp.url("/")).unwrap_or_default();
    assert!(session.contains("_session="), "cookies: {session}");
}

/// A client registered after the IdP started (`PUT /__test/clients`, for a relying party
/// whose port is known only once it runs) signs alice in like a configured one; metadata
/// the IdP refuses (a bad redirect URI) is answered 400 and leaves the client as it was.
#[tokio::test]
async fn a_client_registered_after_start_signs_in_and_bad_metadata_is_refused() {
    let idp = TestIdp::start(serde_json::json!({ "pkce_required": false, "clients": [] })).await;
    let rp = start_rp().await;
    let before = Browser::new()
        .follow(&auth_url(&idp, rp), Some(("alice", "alice-pw")))
        .await;
    assert!(
        !before.url.starts_with(&format!("http://{rp}/cb?")),
        "signed in for a client nobody registered: {before:#?}"
    );

    let client =
        |redirect: String| client_config(CLIENT_ID, CLIENT_SECRET, vec![redirect], vec![], None);
    idp.register_client(client(format!("http://{rp}/cb"))).await;
    let refused = reqwest::Client::new()
        .put(idp.url("/__test/clients"))
        .body(client("not a url".into()).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    let journey = Browser::new()
        .follow(&auth_url(&idp, rp), Some(("alice", "alice-pw")))
        .await;
    assert!(
        journey.url.starts_with(&format!("http://{rp}/cb?")),
        "{journey:#?}"
    );
    assert_eq!(journey.query_param("state").as_deref(), Some("s1"));
}

/// A wrong password ends the journey on the login form, answered with 401 and an error.
#[tokio::test]
async fn a_wrong_password_stops_on_the_login_form_with_401() {
    let rp = start_rp().await;
    let idp = start_idp(rp).await;

    let journey = Browser::new()
        .follow(&auth_url(&idp, rp), Some(("alice", "not-her-password")))
        .await;

    assert_eq!(journey.status, 401, "{journey:#?}");
    assert!(journey.on_login_form(), "{}", journey.body);
    assert!(journey.body.contains(r#"id="error""#), "{}", journey.body);
    assert!(journey.url.ends_with("/login"), "{journey:#?}");
}

/// Without credentials the journey stops at the login form itself (200).
#[tokio::test]
async fn without_credentials_the_journey_stops_at_the_login_form() {
    let rp = start_rp().await;
    let idp = start_idp(rp).await;

    let journey = Browser::new().follow(&auth_url(&idp, rp), None).await;

    assert_eq!(journey.status, 200, "{journey:#?}");
    assert!(journey.on_login_form(), "{}", journey.body);
    assert!(journey.url.contains("/interaction/"), "{journey:#?}");
}

/// The cookie jar keeps the IdP session: a second authorization in the same browser goes
/// straight to the callback, while a fresh browser is asked to log in.
#[tokio::test]
async fn a_second_authorization_in_the_same_browser_skips_the_login_form() {
    let rp = start_rp().await;
    let idp = start_idp(rp).await;
    let browser = Browser::new();
    let first = browser
        .follow(&auth_url(&idp, rp), Some(("bob", "bob-pw")))
        .await;
    assert_eq!(first.status, 200, "{first:#?}");

    let second = browser.follow(&auth_url(&idp, rp), None).await;
    assert_eq!(second.status, 200, "{second:#?}");
    assert!(
        second.url.starts_with(&format!("http://{rp}/cb?")),
        "{second:#?}"
    );
    assert!(second.body.contains("code="), "{}", second.body);

    let stranger = Browser::new().follow(&auth_url(&idp, rp), None).await;
    assert!(stranger.on_login_form(), "{stranger:#?}");
}

/// Logout end to end: the code is exchanged for an ID token, the end-session page's
/// `op.logoutForm` yields its action and `xsrf` field, posting them with `logout=yes`
/// redirects to the post-logout URI, and the next authorization asks for a login again.
#[tokio::test]
async fn the_logout_confirmation_form_can_be_read_and_submitted() {
    let rp = start_rp().await;
    let idp = start_idp(rp).await;
    let doc = discovery(&idp).await;
    let browser = Browser::new();
    let journey = browser
        .follow(&auth_url(&idp, rp), Some(("carol", "carol-pw")))
        .await;
    let code = journey.query_param("code").expect("code");

    let tokens: serde_json::Value = browser
        .client()
        .post(doc["token_endpoint"].as_str().unwrap())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", &format!("http://{rp}/cb")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_token = tokens["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{tokens}"));

    let mut end = reqwest::Url::parse(doc["end_session_endpoint"].as_str().unwrap()).unwrap();
    end.query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair("post_logout_redirect_uri", &format!("http://{rp}/bye"))
        .append_pair("state", "bye1");
    let page = browser.get(end.as_str()).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let (action, hidden) = form_fields(&html, "op.logoutForm");
    assert!(
        hidden
            .iter()
            .any(|(name, value)| name == "xsrf" && !value.is_empty()),
        "{hidden:?}"
    );

    let mut fields: Vec<(&str, &str)> = hidden
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    fields.push(("logout", "yes"));
    let action = end.join(&action).unwrap();
    let done = browser.post_form(action.as_str(), &fields).await;
    assert_eq!(done.status(), 303);
    let location = done.headers()["location"].to_str().unwrap();
    assert_eq!(location, format!("http://{rp}/bye?state=bye1"));

    let again = browser.follow(&auth_url(&idp, rp), None).await;
    assert!(again.on_login_form(), "{again:#?}");
}

/// A client the provider rejects makes `start` panic with the IdP's stderr in the message.
#[tokio::test]
async fn a_bad_client_config_fails_start_with_the_idp_stderr() {
    let config = serde_json::json!({ "clients": [{ "client_id": "broken", "redirect_uris": ["not a url"] }] });
    let outcome = std::panic::AssertUnwindSafe(TestIdp::start(config))
        .catch_unwind()
        .await;
    let panic = outcome.err().expect("start should have panicked");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("invalid client"), "{message}");
}

/// The HTML helpers find a form by id, decode entities in attributes, keep only hidden
/// inputs, and ignore look-alike attributes such as `data-id`.
#[test]
fn form_helpers_read_actions_hidden_inputs_and_entities() {
    let html = r#"<html><body>
        <form data-id="login-form" action="/decoy"></form>
        <FORM method='post' ID="op.logoutForm" action="/session/end/confirm?a=1&amp;b=&#50;">
          <input type="hidden" name="xsrf" value="x&#38;y"/>
          <input type=hidden name=plain value=v>
          <input type="text" name="visible" value="no">
        </FORM>
        <input type="hidden" name="outside" value="no">
    </body></html>"#;

    let (action, hidden) = form_fields(html, "op.logoutForm");
    assert_eq!(action, "/session/end/confirm?a=1&b=2");
    assert_eq!(
        hidden,
        vec![
            ("xsrf".to_string(), "x&y".to_string()),
            ("plain".to_string(), "v".to_string())
        ]
    );
    assert!(find_form(html, "login-form").is_none());
    assert_eq!(
        unescape_html("a &lt;b&gt; &#x41; &bogus; &"),
        "a <b> A &bogus; &"
    );
}
