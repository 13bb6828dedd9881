//! Standard `metav1.Condition` bookkeeping shared by every reconciler: build the desired set,
//! merge it with the conditions already on the object so that `lastTransitionTime` only moves
//! when a status really changes, and tell which transitions deserve an Event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const RESOURCE_CONFLICT: &str = "ResourceConflict";

/// A condition as a reconciler wants it, before timestamps and generations are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Desired {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn status_str(&self) -> &'static str {
        if self.status {
            "True"
        } else {
            "False"
        }
    }
}

/// Now, to the second: the API server stores condition times with second precision, so a
/// sub-second value would never compare equal to what is read back.
pub fn now() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The conditions to store: exactly `desired`, in that order. A condition whose status is
/// unchanged keeps its `lastTransitionTime`; a new or flipped one gets `now`.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    observed_generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = d.status_str();
            let since = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                last_transition_time: since,
                observed_generation,
            }
        })
        .collect()
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The conditions among `types` whose status or reason differ between `old` and `new`: what
/// an Event should announce. Unchanged conditions (a resync) announce nothing.
pub fn transitions<'a>(
    old: &[Condition],
    new: &'a [Condition],
    types: &[&str],
) -> Vec<&'a Condition> {
    new.iter()
        .filter(|c| types.contains(&c.type_.as_str()))
        .filter(|c| {
            find(old, &c.type_).is_none_or(|o| o.status != c.status || o.reason != c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let first = merge(
            &[],
            &[
                Desired::new(READY, false, "ClusterNotReady", "waiting"),
                Desired::new(DEGRADED, false, "AsExpected", ""),
            ],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));
        assert_eq!(first[0].status, "False");
        assert_eq!(first[0].observed_generation, Some(1));

        // Same statuses, new reason and generation: times stay.
        let second = merge(
            &first,
            &[
                Desired::new(READY, false, "SqlFailed", "boom"),
                Desired::new(DEGRADED, false, "AsExpected", ""),
            ],
            Some(2),
            &at(200),
        );
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].reason, "SqlFailed");
        assert_eq!(second[0].observed_generation, Some(2));

        // A flip moves the time.
        let third = merge(
            &second,
            &[
                Desired::new(READY, true, "Applied", "ok"),
                Desired::new(DEGRADED, false, "AsExpected", ""),
            ],
            Some(2),
            &at(300),
        );
        assert_eq!(third[0].last_transition_time, at(300));
        assert_eq!(third[1].last_transition_time, at(100));
    }

    #[test]
    fn merge_keeps_only_the_desired_types_in_order() {
        let old = merge(
            &[],
            &[Desired::new(
                RESOURCE_CONFLICT,
                true,
                "ResourceConflict",
                "x",
            )],
            None,
            &at(1),
        );
        let new = merge(
            &old,
            &[Desired::new(READY, true, "Applied", "")],
            None,
            &at(2),
        );
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].type_, READY);
    }

    #[test]
    fn transitions_announce_only_changes() {
        let a = merge(
            &[],
            &[
                Desired::new(READY, false, "ClusterNotReady", ""),
                Desired::new(DEGRADED, false, "AsExpected", ""),
            ],
            None,
            &at(1),
        );
        assert_eq!(transitions(&[], &a, &[READY]).len(), 1);
        assert!(transitions(&a, &a, &[READY, DEGRADED]).is_empty());
        let b = merge(
            &a,
            &[
                Desired::new(READY, true, "Applied", ""),
                Desired::new(DEGRADED, false, "AsExpected", ""),
            ],
            None,
            &at(2),
        );
        let t = transitions(&a, &b, &[READY, DEGRADED]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].reason, "Applied");
    }
}
