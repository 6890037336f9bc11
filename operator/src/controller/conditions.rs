//! Status conditions shaped like `metav1.Condition`, computed from what a reconcile saw.
//! Pure: the reconciler collects outcomes, this module turns them into conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{ConditionReason, ConditionType};

/// The outcome of one aspect of a reconcile, before it becomes a condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Which condition.
    pub type_: ConditionType,
    /// Whether it holds.
    pub ok: bool,
    /// Why, in one CamelCase word.
    pub reason: ConditionReason,
    /// What a person can do about it.
    pub message: String,
    /// Whether `Ready` waits for it to hold; a warning (a choice the spec made) does not.
    pub blocks_ready: bool,
}

impl Outcome {
    /// A condition that holds.
    pub fn ok(type_: ConditionType, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: true,
            reason: ConditionReason::AsExpected,
            message: message.into(),
            blocks_ready: true,
        }
    }

    /// A condition that does not hold.
    pub fn failed(
        type_: ConditionType,
        reason: ConditionReason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok: false,
            reason,
            message: message.into(),
            blocks_ready: true,
        }
    }

    /// A condition that does not hold because the spec chose so: shown, and published as a
    /// warning, but `Ready` does not wait for it.
    pub fn warning(
        type_: ConditionType,
        reason: ConditionReason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            blocks_ready: false,
            ..Self::failed(type_, reason, message)
        }
    }
}

/// The conditions for `outcomes` plus `Ready` (true when every outcome holds, warnings
/// aside), keeping each
/// condition's `lastTransitionTime` from `previous` when its status did not change.
pub fn conditions(
    outcomes: &[Outcome],
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let failing: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok && o.blocks_ready)
        .map(|o| o.type_.as_str())
        .collect();
    let ready = if failing.is_empty() {
        Outcome::ok(ConditionType::Ready, "the stack matches its spec")
    } else {
        Outcome::failed(
            ConditionType::Ready,
            ConditionReason::Waiting,
            format!("not yet: {}", failing.join(", ")),
        )
    };
    std::iter::once(&ready)
        .chain(outcomes)
        .map(|outcome| {
            let status = if outcome.ok { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == outcome.type_.as_str() && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: outcome.type_.as_str().into(),
                status: status.into(),
                reason: outcome.reason.as_str().into(),
                message: outcome.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("a valid time")
    }

    #[test]
    fn ready_only_when_every_outcome_holds() {
        let outcomes = [
            Outcome::ok(ConditionType::CollectorsReady, "3/3"),
            Outcome::failed(
                ConditionType::DatabaseReady,
                ConditionReason::SecretNotFound,
                "Secret db not found",
            ),
        ];
        let conditions = conditions(&outcomes, &[], Some(2), at(10));
        assert_eq!(conditions[0].type_, "Ready");
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].message, "not yet: DatabaseReady");
        assert_eq!(conditions[2].reason, "SecretNotFound");
        assert!(conditions.iter().all(|c| c.observed_generation == Some(2)));
    }

    #[test]
    fn a_warning_is_shown_but_does_not_hold_ready_back() {
        let outcomes = [Outcome::warning(
            ConditionType::QueryServiceAuthenticated,
            ConditionReason::AuthenticationDisabled,
            "open to anyone",
        )];
        let conditions = conditions(&outcomes, &[], Some(1), at(10));
        assert_eq!(conditions[0].status, "True");
        assert_eq!(
            (conditions[1].status.as_str(), conditions[1].reason.as_str()),
            ("False", "AuthenticationDisabled")
        );
    }

    #[test]
    fn keeps_the_transition_time_while_the_status_stays() {
        let outcome = [Outcome::ok(ConditionType::DatabaseReady, "ok")];
        let first = conditions(&outcome, &[], Some(1), at(10));
        let again = conditions(&outcome, &first, Some(1), at(20));
        assert_eq!(first, again);
        let failed = [Outcome::failed(
            ConditionType::DatabaseReady,
            ConditionReason::DatabaseUnreachable,
            "down",
        )];
        let changed = conditions(&failed, &again, Some(1), at(30));
        assert_eq!(changed[1].last_transition_time, Time(at(30)));
    }
}
