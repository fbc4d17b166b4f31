//! Which pool daemon restarts to serve its renewed certificate, if any (pure).
//!
//! dockerd reads its TLS files once, at start, and cannot reload them; a restart kills the builds
//! it runs. So a renewed server certificate (renewed at 2/3 of its life, months before it
//! expires) is not rolled out through the pod template, which would restart every daemon at
//! once. Instead each daemon is restarted on its own, when it is idle: no running container and
//! no build-cache record in use. Only when it has stayed busy until its old certificate is about
//! to expire ([`ROLL_ANYWAY`]), or its certificate is of a CA that clients no longer trust, is it
//! restarted busy: it would soon be, or already is, refused by every client anyway.

use time::Duration;

/// A busy daemon whose certificate expires within this is restarted anyway.
pub const ROLL_ANYWAY: Duration = Duration::days(7);

/// What one daemon serves, as the operator saw it over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serving {
    /// The server certificate the Secret holds.
    Current,
    /// Another one: renewed since the daemon started.
    Stale {
        /// Issued by the CA the Secret holds and not expired (false: clients refuse it).
        same_ca: bool,
        /// Left of its life.
        expires_in: Duration,
        /// Runs a container or a build; None: could not tell (counted as busy).
        busy: Option<bool>,
    },
}

/// One pool daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    pub pod: String,
    pub ready: bool,
    /// None: not asked (not ready, or TLS off).
    pub serving: Option<Serving>,
}

/// Why a daemon restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Idle,
    Expiring,
    UntrustedCa,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every daemon serves the current certificate (or none could be asked).
    Nothing,
    /// Restart this one.
    Restart { pod: String, why: Why },
    /// These serve an old certificate but are busy (or another daemon is not ready): look again.
    Wait { pods: Vec<String> },
}

/// One restart at a time, and (but for an untrusted CA) only while every other daemon is
/// ready, so a pool never loses more than one daemon to renewal.
pub fn plan(daemons: &[Daemon]) -> Plan {
    let all_ready = daemons.iter().all(|d| d.ready);
    let mut waiting = Vec::new();
    for d in daemons {
        let Some(Serving::Stale { same_ca, expires_in, busy }) = &d.serving else { continue };
        let why = if !same_ca {
            Some(Why::UntrustedCa)
        } else if !all_ready {
            None
        } else if *expires_in <= ROLL_ANYWAY {
            Some(Why::Expiring)
        } else if *busy == Some(false) {
            Some(Why::Idle)
        } else {
            None
        };
        match why {
            Some(why) => return Plan::Restart { pod: d.pod.clone(), why },
            None => waiting.push(d.pod.clone()),
        }
    }
    if waiting.is_empty() { Plan::Nothing } else { Plan::Wait { pods: waiting } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale(pod: &str, busy: Option<bool>, days_left: i64) -> Daemon {
        Daemon {
            pod: pod.into(),
            ready: true,
            serving: Some(Serving::Stale { same_ca: true, expires_in: Duration::days(days_left), busy }),
        }
    }

    fn current(pod: &str) -> Daemon {
        Daemon { pod: pod.into(), ready: true, serving: Some(Serving::Current) }
    }

    #[test]
    fn a_busy_daemon_keeps_its_old_certificate_and_an_idle_one_restarts() {
        assert_eq!(plan(&[current("d-0"), current("d-1")]), Plan::Nothing);
        assert_eq!(plan(&[stale("d-0", Some(true), 100), current("d-1")]), Plan::Wait { pods: vec!["d-0".into()] });
        assert_eq!(plan(&[stale("d-0", None, 100)]), Plan::Wait { pods: vec!["d-0".into()] }, "unknown counts as busy");
        assert_eq!(
            plan(&[stale("d-0", Some(true), 100), stale("d-1", Some(false), 100)]),
            Plan::Restart { pod: "d-1".into(), why: Why::Idle }
        );
    }

    #[test]
    fn one_at_a_time_and_only_while_the_others_are_ready() {
        let mut other = current("d-1");
        other.ready = false;
        assert_eq!(plan(&[stale("d-0", Some(false), 100), other.clone()]), Plan::Wait { pods: vec!["d-0".into()] });
        // A daemon restarting for its certificate is not ready: the next waits for it.
        let restarted = Daemon { pod: "d-0".into(), ready: false, serving: None };
        assert_eq!(plan(&[restarted, stale("d-1", Some(false), 100)]), Plan::Wait { pods: vec!["d-1".into()] });
    }

    #[test]
    fn busy_until_the_end_restarts_anyway_and_an_untrusted_ca_at_once() {
        assert_eq!(plan(&[stale("d-0", Some(true), 7)]), Plan::Restart { pod: "d-0".into(), why: Why::Expiring });
        let mut other = current("d-1");
        other.ready = false;
        let untrusted = Daemon {
            pod: "d-0".into(),
            ready: true,
            serving: Some(Serving::Stale { same_ca: false, expires_in: Duration::days(300), busy: Some(true) }),
        };
        assert_eq!(plan(&[untrusted, other]), Plan::Restart { pod: "d-0".into(), why: Why::UntrustedCa });
    }
}
