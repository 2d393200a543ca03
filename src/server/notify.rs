//! systemd's service notification protocol (`Type=notify`, `sd_notify(3)`): READY=1 once the
//! daemon serves a loaded keyring, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a
//! reload, STOPPING=1 when a stop begins, and a STATUS= line that `systemctl status` shows.
//!
//! Each call is a no-op without `NOTIFY_SOCKET` (not started by systemd), and a failure to
//! notify is logged, never fatal: the daemon serves the same either way. Owns nothing else.

use sd_notify::NotifyState;

/// Send `states`; a debug line when systemd does not listen, a warning when it should but the
/// message cannot be sent.
fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The daemon is serving (the keyring is loaded, the listeners accept): systemd starts the
/// units ordered after this one. `status` says where it listens.
pub fn ready_serving(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload is finished (applied or refused): back to serving.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload has begun; the time lets systemd match it to the `systemctl reload` that asked.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The daemon is stopping: draining requests, then releasing the device.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A status line for `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}
