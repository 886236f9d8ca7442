//! The control plane's state machine (contract.md §2.3) as a pure function: an [`Input`] in,
//! [`Effect`]s out. No sockets, no clock; the driver in [`super::actor`] performs the effects
//! and feeds their results back, so orderings (wake/sleep/exit, failures at each step) are
//! tested here without a daemon or a kernel.
//!
//! `SLEEPING → WAKING → AWAKE → SLEEPING`; a failed wake reverts to SLEEPING and undoes what it
//! started. The driver handles one control request at a time, so a second wake only meets
//! WAKING if a caller bypasses it; it is then refused, as the SDKs do.

use super::client::DaemonError;

/// Where the agent is in the wake/sleep cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Sleeping,
    Waking,
    Awake,
}

impl Phase {
    /// The wire name (`StatusResponse.state`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Sleeping => "sleeping",
            Phase::Waking => "waking",
            Phase::Awake => "awake",
        }
    }
}

/// Why a wake failed. Its `Display` is the control plane's error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    #[error("wake operation already in progress")]
    InProgress,
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("cannot listen for the daemon's DAP connection: {0}")]
    Listener(String),
    #[error("the target process exited; nothing to wake")]
    TargetGone,
}

/// A successful wake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeReply {
    /// `awake` or `already_awake`.
    pub status: &'static str,
    pub debug_port: u16,
    pub connection_id: String,
    pub daemon_url: String,
}

/// A sleep's answer: `sleeping` or `already_sleeping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepReply(pub &'static str);

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `POST /detrix/wake`, optionally with another daemon URL for this wake.
    Wake {
        daemon_url: Option<String>,
    },
    HealthChecked(Result<(), DaemonError>),
    ListenerStarted(Result<u16, String>),
    Registered(Result<String, DaemonError>),
    /// `POST /detrix/sleep`, or the agent is shutting down.
    Sleep,
    /// The target process is gone.
    TargetExited,
    /// The daemon's DAP session ended while awake and no other is live (the daemon died or
    /// closed the socket): its probes are gone, and the next wake registers again.
    SessionLost,
    /// A DAP session is live again (a restarted daemon dialled the kept port by itself).
    SessionResumed,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    CheckHealth {
        url: String,
    },
    /// Bind the DAP listener (configured port or ephemeral) and start serving it.
    StartListener,
    /// `POST /api/v1/connections` while the listener serves.
    Register {
        url: String,
        port: u16,
    },
    /// `DELETE /api/v1/connections/{id}`, best effort.
    Unregister {
        url: String,
        connection_id: String,
    },
    /// Close the listener and every DAP session; their probes are removed.
    StopListener,
    /// Remove any probe still installed (belt and braces after the sessions are gone).
    DropProbes,
    ReplyWake(Result<WakeReply, WakeError>),
    ReplySleep(SleepReply),
    /// Tell connected daemons the target exited (`exited` + `terminated`).
    AnnounceExit,
    /// The agent's work is over.
    Exit,
}

/// The state the control plane reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub phase: Phase,
    /// The configured daemon URL (`DETRIX_DAEMON_URL`).
    pub daemon_url: String,
    /// The URL of the wake in progress or of the current registration.
    pub active_url: String,
    /// The last debug port; 0 before the first wake, kept after sleep.
    pub debug_port: u16,
    /// True only while the listener serves.
    pub listening: bool,
    pub connection_id: Option<String>,
    pub target_gone: bool,
    /// Awake, but the daemon's session ended ([`Input::SessionLost`]); cleared by the next
    /// registration or session.
    pub session_lost: bool,
}

impl Lifecycle {
    #[must_use]
    pub fn new(daemon_url: String) -> Self {
        Self {
            phase: Phase::Sleeping,
            active_url: daemon_url.clone(),
            daemon_url,
            debug_port: 0,
            listening: false,
            connection_id: None,
            target_gone: false,
            session_lost: false,
        }
    }

    /// One transition.
    pub fn step(&mut self, input: Input) -> Vec<Effect> {
        use Effect as E;
        match (self.phase, input) {
            (_, Input::Wake { .. }) if self.target_gone => {
                vec![E::ReplyWake(Err(WakeError::TargetGone))]
            }
            (Phase::Sleeping, Input::Wake { daemon_url }) => {
                self.phase = Phase::Waking;
                self.active_url = daemon_url
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| self.daemon_url.clone());
                vec![E::CheckHealth {
                    url: self.active_url.clone(),
                }]
            }
            (Phase::Waking, Input::Wake { .. }) => vec![E::ReplyWake(Err(WakeError::InProgress))],
            // The daemon lost the session (it died and may have restarted without the row):
            // "already awake" would leave it never hearing of us again. Wake anew, on a fresh
            // listener whose peer check names this wake's daemon.
            (Phase::Awake, Input::Wake { daemon_url }) if self.session_lost => {
                self.phase = Phase::Waking;
                self.listening = false;
                self.session_lost = false;
                self.connection_id = None;
                self.active_url = daemon_url
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| self.daemon_url.clone());
                vec![
                    E::StopListener,
                    E::DropProbes,
                    E::CheckHealth {
                        url: self.active_url.clone(),
                    },
                ]
            }
            (Phase::Awake, Input::Wake { .. }) => {
                vec![E::ReplyWake(Ok(self.reply("already_awake")))]
            }
            (Phase::Waking, Input::HealthChecked(Ok(()))) => vec![E::StartListener],
            (Phase::Waking, Input::HealthChecked(Err(e))) => {
                self.phase = Phase::Sleeping;
                vec![E::ReplyWake(Err(e.into()))]
            }
            (Phase::Waking, Input::ListenerStarted(Ok(port))) => {
                self.debug_port = port;
                self.listening = true;
                vec![E::Register {
                    url: self.active_url.clone(),
                    port,
                }]
            }
            (Phase::Waking, Input::ListenerStarted(Err(e))) => {
                self.phase = Phase::Sleeping;
                vec![E::ReplyWake(Err(WakeError::Listener(e)))]
            }
            (Phase::Waking, Input::Registered(Ok(id))) => {
                self.phase = Phase::Awake;
                self.connection_id = Some(id);
                vec![E::ReplyWake(Ok(self.reply("awake")))]
            }
            (Phase::Waking, Input::Registered(Err(e))) => {
                self.phase = Phase::Sleeping;
                self.listening = false;
                vec![E::StopListener, E::DropProbes, E::ReplyWake(Err(e.into()))]
            }
            (Phase::Sleeping, Input::Sleep) => vec![E::ReplySleep(SleepReply("already_sleeping"))],
            (Phase::Awake | Phase::Waking, Input::Sleep) => {
                let mut fx = self.unregister();
                fx.extend([
                    E::StopListener,
                    E::DropProbes,
                    E::ReplySleep(SleepReply("sleeping")),
                ]);
                self.go_to_sleep();
                fx
            }
            (phase, Input::TargetExited) => {
                self.target_gone = true;
                let mut fx = Vec::new();
                if phase != Phase::Sleeping {
                    fx.push(E::AnnounceExit);
                    fx.extend(self.unregister());
                    fx.extend([E::StopListener, E::DropProbes]);
                }
                self.go_to_sleep();
                fx.push(E::Exit);
                fx
            }
            (Phase::Awake, Input::SessionLost) => {
                self.session_lost = true;
                vec![E::DropProbes]
            }
            (_, Input::SessionResumed) => {
                self.session_lost = false;
                Vec::new()
            }
            (_, Input::SessionLost) => Vec::new(),
            // Results that arrive in a phase that no longer expects them (cannot happen with the
            // one-request-at-a-time driver) change nothing.
            (_, Input::HealthChecked(_) | Input::ListenerStarted(_) | Input::Registered(_)) => {
                Vec::new()
            }
        }
    }

    fn unregister(&self) -> Vec<Effect> {
        self.connection_id
            .iter()
            .map(|id| Effect::Unregister {
                url: self.active_url.clone(),
                connection_id: id.clone(),
            })
            .collect()
    }

    fn go_to_sleep(&mut self) {
        self.phase = Phase::Sleeping;
        self.session_lost = false;
        self.listening = false;
        self.connection_id = None;
    }

    fn reply(&self, status: &'static str) -> WakeReply {
        WakeReply {
            status,
            debug_port: self.debug_port,
            connection_id: self.connection_id.clone().unwrap_or_default(),
            daemon_url: self.active_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect as E;

    const URL: &str = "http://127.0.0.1:8090";

    fn awake() -> Lifecycle {
        let mut l = Lifecycle::new(URL.into());
        l.step(Input::Wake { daemon_url: None });
        l.step(Input::HealthChecked(Ok(())));
        l.step(Input::ListenerStarted(Ok(42137)));
        l.step(Input::Registered(Ok("abc".into())));
        l
    }

    #[test]
    fn wake_checks_health_then_listens_then_registers() {
        let mut l = Lifecycle::new(URL.into());
        assert_eq!(
            l.step(Input::Wake { daemon_url: None }),
            vec![E::CheckHealth { url: URL.into() }]
        );
        assert_eq!(l.phase, Phase::Waking);
        assert_eq!(l.step(Input::HealthChecked(Ok(()))), vec![E::StartListener]);
        assert_eq!(
            l.step(Input::ListenerStarted(Ok(42137))),
            vec![E::Register {
                url: URL.into(),
                port: 42137
            }]
        );
        let fx = l.step(Input::Registered(Ok("abc".into())));
        assert_eq!(
            fx,
            vec![E::ReplyWake(Ok(WakeReply {
                status: "awake",
                debug_port: 42137,
                connection_id: "abc".into(),
                daemon_url: URL.into()
            }))]
        );
        assert_eq!(
            (l.phase, l.listening, l.connection_id.as_deref()),
            (Phase::Awake, true, Some("abc"))
        );
    }

    #[test]
    fn a_wake_after_the_daemons_session_was_lost_registers_again() {
        let mut l = awake();
        assert_eq!(l.step(Input::SessionLost), vec![E::DropProbes]);
        assert_eq!((l.phase, l.session_lost), (Phase::Awake, true));
        assert_eq!(
            l.step(Input::Wake { daemon_url: None }),
            vec![
                E::StopListener,
                E::DropProbes,
                E::CheckHealth { url: URL.into() }
            ]
        );
        assert_eq!(
            (
                l.phase,
                l.session_lost,
                l.listening,
                l.connection_id.clone()
            ),
            (Phase::Waking, false, false, None)
        );
        assert_eq!(l.step(Input::HealthChecked(Ok(()))), vec![E::StartListener]);
        assert_eq!(
            l.step(Input::ListenerStarted(Ok(42138))),
            vec![E::Register {
                url: URL.into(),
                port: 42138
            }]
        );
        let fx = l.step(Input::Registered(Ok("abc".into())));
        assert_eq!(
            fx,
            vec![E::ReplyWake(Ok(WakeReply {
                status: "awake",
                debug_port: 42138,
                connection_id: "abc".into(),
                daemon_url: URL.into()
            }))]
        );
    }

    #[test]
    fn a_session_lost_while_asleep_changes_nothing_and_a_resumed_one_clears_it() {
        let mut l = Lifecycle::new(URL.into());
        assert_eq!(l.step(Input::SessionLost), vec![]);
        assert!(!l.session_lost);
        let mut l = awake();
        l.step(Input::SessionLost);
        assert_eq!(l.step(Input::SessionResumed), vec![]);
        assert!(!l.session_lost);
        let fx = l.step(Input::Wake { daemon_url: None });
        assert_eq!(
            fx,
            vec![E::ReplyWake(Ok(WakeReply {
                status: "already_awake",
                debug_port: 42137,
                connection_id: "abc".into(),
                daemon_url: URL.into()
            }))]
        );
    }

    #[test]
    fn second_wake_is_already_awake_with_the_same_port_and_id() {
        let mut l = awake();
        let fx = l.step(Input::Wake {
            daemon_url: Some("http://elsewhere:1".into()),
        });
        assert_eq!(
            fx,
            vec![E::ReplyWake(Ok(WakeReply {
                status: "already_awake",
                debug_port: 42137,
                connection_id: "abc".into(),
                daemon_url: URL.into()
            }))]
        );
    }

    #[test]
    fn unreachable_daemon_leaves_it_sleeping_and_untouched() {
        let mut l = Lifecycle::new(URL.into());
        l.step(Input::Wake {
            daemon_url: Some("http://127.0.0.1:1".into()),
        });
        let err = DaemonError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        let fx = l.step(Input::HealthChecked(Err(err.clone())));
        assert_eq!(fx, vec![E::ReplyWake(Err(WakeError::Daemon(err)))]);
        assert_eq!(
            (l.phase, l.debug_port, l.connection_id.clone()),
            (Phase::Sleeping, 0, None)
        );
    }

    #[test]
    fn failed_registration_stops_the_listener_and_reverts() {
        let mut l = Lifecycle::new(URL.into());
        l.step(Input::Wake { daemon_url: None });
        l.step(Input::HealthChecked(Ok(())));
        l.step(Input::ListenerStarted(Ok(40000)));
        let err = DaemonError::RegisterRefused {
            status: 500,
            body: "no".into(),
        };
        let fx = l.step(Input::Registered(Err(err.clone())));
        assert_eq!(
            fx,
            vec![
                E::StopListener,
                E::DropProbes,
                E::ReplyWake(Err(WakeError::Daemon(err)))
            ]
        );
        assert_eq!((l.phase, l.listening), (Phase::Sleeping, false));
    }

    #[test]
    fn sleep_unregisters_stops_and_drops_probes_and_keeps_the_port() {
        let mut l = awake();
        let fx = l.step(Input::Sleep);
        assert_eq!(
            fx,
            vec![
                E::Unregister {
                    url: URL.into(),
                    connection_id: "abc".into()
                },
                E::StopListener,
                E::DropProbes,
                E::ReplySleep(SleepReply("sleeping"))
            ]
        );
        assert_eq!(
            (l.phase, l.listening, l.debug_port, l.connection_id.clone()),
            (Phase::Sleeping, false, 42137, None)
        );
        assert_eq!(
            l.step(Input::Sleep),
            vec![E::ReplySleep(SleepReply("already_sleeping"))]
        );
    }

    #[test]
    fn wake_while_waking_is_refused() {
        let mut l = Lifecycle::new(URL.into());
        l.step(Input::Wake { daemon_url: None });
        assert_eq!(
            l.step(Input::Wake { daemon_url: None }),
            vec![E::ReplyWake(Err(WakeError::InProgress))]
        );
    }

    #[test]
    fn target_exit_announces_unregisters_and_exits() {
        let mut l = awake();
        let fx = l.step(Input::TargetExited);
        assert_eq!(
            fx,
            vec![
                E::AnnounceExit,
                E::Unregister {
                    url: URL.into(),
                    connection_id: "abc".into()
                },
                E::StopListener,
                E::DropProbes,
                E::Exit
            ]
        );
        assert_eq!(
            l.step(Input::Wake { daemon_url: None }),
            vec![E::ReplyWake(Err(WakeError::TargetGone))]
        );
        let mut asleep = Lifecycle::new(URL.into());
        assert_eq!(asleep.step(Input::TargetExited), vec![E::Exit]);
    }
}
