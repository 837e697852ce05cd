//! `/oauth2/mfa`: the TOTP pages. A login that needs its second factor arrives here with the
//! pending-MFA cookie (its session is not issued yet); a session that reached a route needing
//! TOTP arrives with `?rd=` (step-up). GET shows the enrolment page (QR code, key, first code)
//! or the code form; POST (CSRF-checked) confirms or verifies, then issues the session or marks
//! it, and sends the browser on to `rd`. Every store change is one write transaction on the
//! blocking pool; every attempt is counted in `gatehouse_mfa_challenges_total`.

use crate::metrics::{MfaResult, StoreOp};
use std::sync::Arc;

use http::header::SET_COOKIE;
use http::StatusCode;
use pingora::proxy::Session;

use super::gate::{Waiting, PENDING_TTL};
use super::{EnrolError, Enrolment, EnrolmentStart, FailureOutcome, MfaRefusal, WrongCode};
use crate::auth::endpoints::{
    cookie_attributes, encode, html, param, read_form, redirect, safe_rd,
};
use crate::auth::session::{LiveSession, Lookup};
use crate::auth::Auth;
use crate::pages::escape;
use crate::store::audit::{AuditAction, AuditActor, AuditEntry};
use crate::store::StoreError;

pub const MFA_PATH: &str = "/oauth2/mfa";

pub const CONFLICT_MESSAGE: &str = "This sign-in method cannot provide the second factor this \
     page requires: it keeps no local account to hold one. Sign in with a method that does.";

fn pending_cookie_name(auth: &Auth) -> String {
    format!("{}_mfa", auth.sessions.config().cookie_name)
}

/// The `Set-Cookie` value of the pending-MFA cookie (short-lived, only sent to `/oauth2/mfa`).
pub fn pending_cookie(auth: &Auth, sealed: &str) -> String {
    format!(
        "{}={sealed}; {}",
        pending_cookie_name(auth),
        cookie_attributes(auth, MFA_PATH, PENDING_TTL)
    )
}

fn clear_pending_cookie(auth: &Auth) -> String {
    format!(
        "{}=; {}",
        pending_cookie_name(auth),
        cookie_attributes(auth, MFA_PATH, 0)
    )
}

/// Links to the connections whose users have local accounts (JIT), for the conflict page.
pub fn local_sign_ins(auth: &Auth, rd: &str) -> String {
    let links: String = auth
        .providers
        .iter()
        .filter(|p| p.connection.jit)
        .map(|p| {
            format!(
                "<a class=\"button\" href=\"/oauth2/start?connection={}&amp;rd={}\">Sign in with {}</a>",
                encode(&p.connection.id),
                encode(rd),
                escape(&p.connection.display_name)
            )
        })
        .collect();
    if links.is_empty() {
        "<p>No sign-in method here keeps local accounts; ask an administrator.</p>".to_string()
    } else {
        links
    }
}

/// The answer where TOTP is required but the user's connection keeps no local account
/// (`when_no_local_account = "deny"`): 403, a page naming the sign-ins that can (`rd` to come
/// back to), or JSON for API clients.
pub async fn conflict(
    auth: &Auth,
    session: &mut Session,
    rd: &str,
    request_id: &str,
    browser: bool,
) -> pingora::Result<()> {
    if !browser {
        let (kind, body) = crate::proxy::respond::error_body(
            StatusCode::FORBIDDEN,
            CONFLICT_MESSAGE,
            request_id,
            false,
        );
        return crate::proxy::respond::send(session, StatusCode::FORBIDDEN, kind, body, &[]).await;
    }
    let body = format!(
        "<p>{}</p>{}",
        escape(CONFLICT_MESSAGE),
        local_sign_ins(auth, rd)
    );
    html(
        session,
        StatusCode::FORBIDDEN,
        "Another sign-in is needed",
        &body,
        vec![],
    )
    .await
}

/// Who is at the MFA step.
enum Context {
    /// A login waiting for its second factor.
    Pending(Waiting),
    /// A session stepping up for a route that requires TOTP.
    StepUp {
        live: Arc<LiveSession>,
        user_id: String,
        username: String,
        rd: String,
    },
}

impl Context {
    /// What the CSRF token is bound to.
    fn id(&self) -> &str {
        match self {
            Context::Pending(w) => &w.id,
            Context::StepUp { live, .. } => &live.sid,
        }
    }

    fn user(&self) -> (&str, &str) {
        match self {
            Context::Pending(w) => (&w.user_id, &w.username),
            Context::StepUp {
                user_id, username, ..
            } => (user_id, username),
        }
    }

    fn rd(&self) -> &str {
        match self {
            Context::Pending(w) => &w.rd,
            Context::StepUp { rd, .. } => rd,
        }
    }
}

fn context(auth: &Auth, session: &Session, rd: Option<&str>) -> Option<Context> {
    let headers = &session.req_header().headers;
    let name = pending_cookie_name(auth);
    let pending = crate::auth::session::request_cookies(headers)
        .filter(|(k, _)| *k == name)
        .find_map(|(_, v)| auth.mfa.peek(v));
    if let Some(waiting) = pending {
        return Some(Context::Pending(waiting));
    }
    let Lookup::Live(live) = auth.sessions.lookup(headers) else {
        return None;
    };
    let user_id = live.identity.user_id.clone()?;
    let username = live
        .identity
        .username
        .clone()
        .unwrap_or_else(|| user_id.clone());
    Some(Context::StepUp {
        rd: safe_rd(auth, session, rd),
        live,
        user_id,
        username,
    })
}

/// Serves `/oauth2/mfa`.
pub async fn handle(
    auth: &Arc<Auth>,
    session: &mut Session,
    pairs: &[(String, String)],
    request_id: &str,
) -> pingora::Result<()> {
    let post = session.req_header().method == http::Method::POST;
    let form = if post {
        read_form(session).await?
    } else {
        pairs.to_vec()
    };
    let Some(ctx) = context(auth, session, param(&form, "rd")) else {
        // Nothing to verify: start over.
        return redirect(session, "/oauth2/start", vec![clear_pending_cookie(auth)]).await;
    };
    if let Context::StepUp { live, rd, .. } = &ctx {
        if live.mfa_done_at().is_some() {
            return redirect(session, rd, vec![]).await;
        }
    }
    if !post {
        return show(auth, session, &ctx, None, StatusCode::OK).await;
    }
    let token_ok = param(&form, "csrf").is_some_and(|t| auth.mfa.csrf_ok(t, ctx.id()));
    if !token_ok {
        tracing::warn!(request_id, "MFA form refused: bad or missing CSRF token");
        return html(
            session,
            StatusCode::FORBIDDEN,
            "Form expired",
            "<p>This form is no longer valid. <a href=\"/oauth2/start\">Sign in again</a>.</p>",
            vec![],
        )
        .await;
    }
    let code = param(&form, "code").unwrap_or("").trim().to_string();
    match param(&form, "enrolment") {
        Some(pending) => confirm(auth, session, &ctx, pending, &code, request_id).await,
        None => verify(auth, session, &ctx, &code, request_id).await,
    }
}

/// Reads the account at the MFA step.
fn account(
    auth: &Auth,
    user_id: &str,
) -> Result<Option<crate::store::users::UserRecord>, StoreError> {
    auth.store.read(|tx| tx.user(user_id))
}

/// The enrolment page or the code form, with an optional message.
async fn show(
    auth: &Arc<Auth>,
    session: &mut Session,
    ctx: &Context,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    let (user_id, username) = ctx.user();
    let user = match account(auth, user_id) {
        Ok(Some(user)) if !user.disabled => user,
        Ok(_) => {
            return html(
                session,
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                "<p>This account is disabled or gone. Ask an administrator.</p>",
                vec![clear_header(auth)],
            )
            .await
        }
        Err(e) => return store_failure(auth, session, e).await,
    };
    if user.mfa.is_enrolled() {
        return verify_page(auth, session, ctx, message, status).await;
    }
    let now = auth.mfa.now();
    match Enrolment::start(&auth.mfa.sealer, username, &auth.mfa.config.issuer, now) {
        Ok(start) => enrol_page(auth, session, ctx, &start, message, status).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a TOTP enrolment");
            html(
                session,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Set-up failed",
                "<p>The second factor could not be set up. Please try again.</p>",
                vec![],
            )
            .await
        }
    }
}

fn clear_header(auth: &Auth) -> (http::HeaderName, String) {
    (SET_COOKIE, clear_pending_cookie(auth))
}

fn hidden(ctx: &Context, auth: &Auth) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"rd\" value=\"{}\">",
        escape(&auth.mfa.csrf(ctx.id())),
        escape(ctx.rd())
    )
}

fn message_html(message: Option<&str>) -> String {
    message
        .map(|m| {
            format!(
                "<p role=\"alert\" id=\"mfa-error\"><strong>{}</strong></p>",
                escape(m)
            )
        })
        .unwrap_or_default()
}

async fn enrol_page(
    auth: &Arc<Auth>,
    session: &mut Session,
    ctx: &Context,
    start: &EnrolmentStart,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    let body = format!(
        "{msg}<p>This page needs a second sign-in step. Scan the code with an authenticator \
         app, or type the key into it, then enter the 6-digit code the app shows.</p>\
         <div id=\"qr\" aria-label=\"QR code of the set-up link\" style=\"width:14rem\">{svg}</div>\
         <p>Key: <code id=\"secret\">{key}</code></p>\
         <p><small>Set-up link: <code id=\"otpauth-uri\" style=\"word-break:break-all\">{uri}</code></small></p>\
         <form id=\"mfa-enrol-form\" method=\"post\" action=\"{MFA_PATH}\">{hidden}\
         <input type=\"hidden\" name=\"enrolment\" value=\"{pending}\">\
         <label for=\"code\">Code from the app</label> \
         <input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required> \
         <button class=\"button\" id=\"mfa-submit\" type=\"submit\">Confirm</button></form>",
        msg = message_html(message),
        svg = start.qr_svg,
        key = escape(&start.manual_key),
        uri = escape(&start.otpauth_uri),
        hidden = hidden(ctx, auth),
        pending = escape(&start.pending),
    );
    html(session, status, "Set up two-step sign-in", &body, vec![]).await
}

async fn verify_page(
    auth: &Arc<Auth>,
    session: &mut Session,
    ctx: &Context,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    let body = format!(
        "{msg}<p>Enter the 6-digit code from your authenticator app, or one of your recovery \
         codes.</p><form id=\"mfa-verify-form\" method=\"post\" action=\"{MFA_PATH}\">{hidden}\
         <label for=\"code\">Code</label> \
         <input id=\"code\" name=\"code\" autocomplete=\"one-time-code\" required> \
         <button class=\"button\" id=\"mfa-submit\" type=\"submit\">Continue</button></form>",
        msg = message_html(message),
        hidden = hidden(ctx, auth),
    );
    html(session, status, "Two-step sign-in", &body, vec![]).await
}

async fn store_failure(auth: &Auth, session: &mut Session, e: StoreError) -> pingora::Result<()> {
    auth.metrics.store_error(StoreOp::Login);
    tracing::error!(error = %e, "MFA step: store error");
    html(
        session,
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "<p>The sign-in could not be completed. Please try again.</p>",
        vec![],
    )
    .await
}

fn count(auth: &Auth, result: MfaResult) {
    auth.metrics.mfa_challenge(result);
}

fn audit(action: AuditAction, user_id: &str, request_id: &str, at: u64) -> AuditEntry {
    let mut entry = AuditEntry::new(AuditActor::Login, action, at);
    entry.user_id = Some(user_id.to_string());
    entry.request_id = Some(request_id.to_string()).filter(|r| !r.is_empty());
    entry
}

/// Runs a store write on the blocking pool.
async fn write<T: Send + 'static>(
    auth: &Arc<Auth>,
    f: impl FnOnce(&mut crate::store::Tx) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let auth = Arc::clone(auth);
    tokio::task::spawn_blocking(move || auth.store.write(f))
        .await
        .unwrap_or_else(|e| Err(StoreError::Db(format!("the task failed: {e}"))))
}

/// The first code of an enrolment: saves the secret, shows the recovery codes once, and
/// finishes the login (or the step-up).
async fn confirm(
    auth: &Arc<Auth>,
    session: &mut Session,
    ctx: &Context,
    pending: &str,
    code: &str,
    request_id: &str,
) -> pingora::Result<()> {
    let (user_id, username) = ctx.user();
    let now = auth.mfa.now();
    let confirmed = match Enrolment::confirm(&auth.mfa.sealer, username, pending, code, now) {
        Ok(confirmed) => confirmed,
        Err(EnrolError::Code(_)) => {
            count(auth, MfaResult::Failure);
            let again = Enrolment::resume(
                &auth.mfa.sealer,
                username,
                &auth.mfa.config.issuer,
                pending,
                now,
            );
            return match again {
                Ok(start) => {
                    let msg = "That code does not match. Check the time on your device, then enter the code the app shows now.";
                    enrol_page(
                        auth,
                        session,
                        ctx,
                        &start,
                        Some(msg),
                        StatusCode::UNAUTHORIZED,
                    )
                    .await
                }
                Err(_) => {
                    show(
                        auth,
                        session,
                        ctx,
                        Some("The set-up expired; scan the new code."),
                        StatusCode::OK,
                    )
                    .await
                }
            };
        }
        Err(_) => {
            return show(
                auth,
                session,
                ctx,
                Some("The set-up expired or is not valid; scan the new code."),
                StatusCode::OK,
            )
            .await
        }
    };
    let record = confirmed.record.clone();
    let uid = user_id.to_string();
    let rid = request_id.to_string();
    let saved = write(auth, move |tx| {
        let Some(mut user) = tx.user(&uid)? else {
            return Ok(false);
        };
        if user.mfa.is_enrolled() || user.disabled {
            return Ok(false);
        }
        user.mfa = record;
        user.updated_at = now;
        tx.put_user(&user)?;
        let mut entry = audit(AuditAction::MfaEnrolled, &uid, &rid, now);
        entry.changed = vec!["mfa".into()];
        tx.append_audit(&entry)?;
        Ok(true)
    })
    .await;
    match saved {
        Ok(true) => {}
        Ok(false) => return show(auth, session, ctx, None, StatusCode::OK).await,
        Err(e) => return store_failure(auth, session, e).await,
    }
    auth.metrics.mfa_enrolments.inc();
    count(auth, MfaResult::Success);
    tracing::info!(user_id, request_id, "TOTP enrolled");
    let (cookies, rd) = match finish(auth, session, ctx, now).await {
        Ok(done) => done,
        Err(e) => return store_failure(auth, session, e).await,
    };
    let codes: String = confirmed
        .recovery_codes
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", escape(c)))
        .collect();
    let body = format!(
        "<p>Two-step sign-in is set up. These recovery codes each work once, if you lose the \
         app. They are shown only now: keep them somewhere safe.</p>\
         <ul id=\"recovery-codes\">{codes}</ul>\
         <a class=\"button\" id=\"continue\" href=\"{}\">Continue</a>",
        escape(&rd)
    );
    let extra = cookies.into_iter().map(|c| (SET_COOKIE, c)).collect();
    html(
        session,
        StatusCode::OK,
        "Save your recovery codes",
        &body,
        extra,
    )
    .await
}

/// A code at the verify form: TOTP (digits) or a recovery code, under the lockout.
async fn verify(
    auth: &Arc<Auth>,
    session: &mut Session,
    ctx: &Context,
    code: &str,
    request_id: &str,
) -> pingora::Result<()> {
    let (user_id, _) = ctx.user();
    let now = auth.mfa.now();
    let is_totp = !code.is_empty() && code.chars().all(|c| c.is_ascii_digit() || c == ' ');
    let uid = user_id.to_string();
    let rid = request_id.to_string();
    let code_owned = code.to_string();
    let policy = auth.mfa.config.lockout;
    let sealer = auth.mfa.sealer.clone();
    let outcome = write(auth, move |tx| {
        let Some(mut user) = tx.user(&uid)? else {
            return Ok(Err(MfaRefusal::NotEnrolled));
        };
        if user.disabled {
            return Ok(Err(MfaRefusal::NotEnrolled));
        }
        let result = if is_totp {
            user.mfa.verify_totp(&sealer, &code_owned, now, &policy)
        } else {
            user.mfa.use_recovery_code(&code_owned, now, &policy)
        };
        tx.put_user(&user)?;
        match &result {
            Err(MfaRefusal::Wrong {
                outcome: FailureOutcome::LockedNow { .. },
                ..
            }) => {
                let mut entry = audit(AuditAction::MfaLocked, &uid, &rid, now);
                entry.reason = Some(format!("{} wrong codes", policy.max_failures));
                tx.append_audit(&entry)?;
            }
            Ok(()) if !is_totp => {
                tx.append_audit(&audit(AuditAction::MfaRecoveryUsed, &uid, &rid, now))?;
            }
            _ => {}
        }
        Ok(result)
    })
    .await;
    let result = match outcome {
        Ok(r) => r,
        Err(e) => return store_failure(auth, session, e).await,
    };
    match result {
        Ok(()) => {
            count(
                auth,
                if is_totp {
                    MfaResult::Success
                } else {
                    MfaResult::Recovery
                },
            );
            match finish(auth, session, ctx, now).await {
                Ok((cookies, rd)) => redirect(session, &rd, cookies).await,
                Err(e) => store_failure(auth, session, e).await,
            }
        }
        Err(MfaRefusal::Locked { until })
        | Err(MfaRefusal::Wrong {
            outcome: FailureOutcome::LockedNow { until } | FailureOutcome::AlreadyLocked { until },
            ..
        }) => {
            count(auth, MfaResult::Locked);
            tracing::warn!(
                user_id,
                request_id,
                until,
                "MFA locked after too many wrong codes"
            );
            let minutes = until.saturating_sub(now).div_ceil(60);
            let body = format!(
                "<p id=\"mfa-locked\">Too many wrong codes. Try again in {minutes} minute(s).</p>"
            );
            html(
                session,
                StatusCode::TOO_MANY_REQUESTS,
                "Locked for now",
                &body,
                vec![],
            )
            .await
        }
        Err(MfaRefusal::Wrong { why, outcome }) => {
            let left = match outcome {
                FailureOutcome::Counted { tries_left } => tries_left,
                _ => 0,
            };
            let (label, msg) = match why {
                WrongCode::Replay => (
                    MfaResult::Replay,
                    "That code was already used. Wait for the next one.",
                ),
                WrongCode::Totp | WrongCode::Recovery => {
                    (MfaResult::Failure, "That code is not right.")
                }
            };
            count(auth, label);
            tracing::info!(
                user_id,
                request_id,
                kind = label.as_str(),
                tries_left = left,
                "MFA code refused"
            );
            let msg = format!("{msg} {left} tries left.");
            verify_page(auth, session, ctx, Some(&msg), StatusCode::UNAUTHORIZED).await
        }
        Err(MfaRefusal::Malformed) => {
            verify_page(
                auth,
                session,
                ctx,
                Some("Enter the 6 digits from the app, or a recovery code."),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(MfaRefusal::NotEnrolled) => show(auth, session, ctx, None, StatusCode::OK).await,
        Err(e @ (MfaRefusal::SecretUnreadable(_) | MfaRefusal::SecretUnusable)) => {
            tracing::error!(user_id, error = %e, "stored TOTP secret cannot be used");
            html(
                session,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Second factor unavailable",
                "<p>Your second factor cannot be checked right now. Ask an administrator to reset it.</p>",
                vec![],
            )
            .await
        }
    }
}

/// After an accepted code: the pending login's session is issued (recording when MFA was
/// done), or the stepping-up session is marked. Returns the cookies to set and where to go.
async fn finish(
    auth: &Arc<Auth>,
    session: &Session,
    ctx: &Context,
    now: u64,
) -> Result<(Vec<String>, String), StoreError> {
    match ctx {
        Context::Pending(waiting) => {
            let Some(login) = auth.mfa.take(&waiting.id) else {
                // Already finished in another tab: start over.
                return Ok((vec![clear_pending_cookie(auth)], "/oauth2/start".into()));
            };
            let pending = login.session.with_mfa(now);
            let record = pending.record().clone();
            write(auth, move |tx| tx.put_session(&record)).await?;
            let mut cookies = auth.sessions.activate(pending);
            auth.update_sessions_gauge();
            cookies.push(clear_pending_cookie(auth));
            Ok((cookies, safe_rd(auth, session, Some(&login.rd))))
        }
        Context::StepUp { live, rd, .. } => {
            auth.sessions.mark_mfa(live, now).await?;
            Ok((vec![], rd.clone()))
        }
    }
}
