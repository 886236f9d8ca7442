//! The stages of a staged wake, decided identically on every node with no coordination but the
//! `DetrixWake` object: the targets (one per selected container, fleet-wide) are ordered by a
//! stable hash of their pod UID and container name ([`rank`]: FNV-1a, the same on every
//! machine and Rust version, unlike std's hasher), and stage `k` wakes the first
//! [`Plan::awake_count`] of them. So the canary is the same target on every node and across
//! agent restarts, each stage is a superset of the one before, and a node needs only the list
//! of selected pods (one API list in the object's namespace) to know which of its own targets
//! are in.
//!
//! The textual forms match the CRD's schema (`deploy/kubernetes/base/crd.yaml`): steps as
//! percentages (`10%,50%,100%` on the command line, `[10, 50, 100]` in the object) and
//! Go-style durations (`30s`, `15m`, `1h30m`, `500ms`).

use std::time::Duration;

/// A parsed `--canary N --steps …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Targets awake at stage 0, alone.
    pub canary: u32,
    /// Percentages of all targets awake at stages 1.., ascending, the last 100.
    pub steps: Vec<u8>,
}

impl Plan {
    /// Checks the steps: each 1..=100, strictly ascending, the last 100.
    ///
    /// # Errors
    /// One sentence naming the fault.
    pub fn new(canary: u32, steps: Vec<u8>) -> Result<Self, String> {
        if steps.is_empty() {
            return Err("no steps; give e.g. --steps 10%,50%,100%".to_owned());
        }
        if let Some(bad) = steps.iter().find(|s| !(1..=100).contains(*s)) {
            return Err(format!("step {bad}% is outside 1%..100%"));
        }
        if let Some(w) = steps.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "steps must rise: {}% is followed by {}%",
                w[0], w[1]
            ));
        }
        if steps.last() != Some(&100) {
            return Err(format!(
                "the last step is {}%; end with 100% so every target is reached",
                steps.last().copied().unwrap_or_default()
            ));
        }
        Ok(Self { canary, steps })
    }

    /// The last stage (the one with every target awake).
    #[must_use]
    pub fn last_stage(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX)
    }

    /// How many of `total` targets are awake at `stage` (0 the canary, k the k-th step):
    /// never fewer than the canary, never more than `total`, rounded up so 10% of 3 is 1.
    #[must_use]
    pub fn awake_count(&self, stage: u32, total: usize) -> usize {
        let canary = usize::try_from(self.canary)
            .unwrap_or(usize::MAX)
            .min(total);
        if stage == 0 {
            return canary;
        }
        let i = usize::try_from(stage)
            .unwrap_or(usize::MAX)
            .min(self.steps.len())
            - 1;
        let pct = usize::from(self.steps[i]);
        (total * pct).div_ceil(100).max(canary).min(total)
    }

    /// Which of `targets` (pod UID, container name) are awake at `stage`, in rank order.
    #[must_use]
    pub fn members<'a>(
        &self,
        stage: u32,
        targets: &'a [(String, String)],
    ) -> Vec<&'a (String, String)> {
        let mut ranked: Vec<&(String, String)> = targets.iter().collect();
        ranked.sort_by(|a, b| (rank(&a.0, &a.1), &a.0, &a.1).cmp(&(rank(&b.0, &b.1), &b.0, &b.1)));
        ranked.truncate(self.awake_count(stage, targets.len()));
        ranked
    }
}

/// FNV-1a (64 bit) of `pod_uid`, a NUL, `container`.
#[must_use]
pub fn rank(pod_uid: &str, container: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_uid.bytes().chain([0]).chain(container.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parses `10%,50%,100%` (the `%` may be left out).
///
/// # Errors
/// A step that is not a whole percentage, or as [`Plan::new`].
pub fn parse_steps(text: &str) -> Result<Vec<u8>, String> {
    text.split(',')
        .map(|s| {
            let s = s.trim();
            let n = s.strip_suffix('%').unwrap_or(s);
            n.parse::<u8>()
                .map_err(|_| format!("step `{s}` is not a whole percentage like 10%"))
        })
        .collect()
}

/// Parses a Go-style duration: one or more `<digits><unit>`, units `ms`, `s`, `m`, `h`.
///
/// # Errors
/// Anything else, naming the text and an example.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration like 30s, 15m or 1h30m");
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        let part = unit
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("uid-{i:03}"), "app".to_owned()))
            .collect()
    }

    #[test]
    fn counts_per_stage() {
        let p = Plan::new(1, vec![10, 50, 100]).unwrap();
        assert_eq!(p.last_stage(), 3);
        let counts = |total| (0..=3).map(|s| p.awake_count(s, total)).collect::<Vec<_>>();
        assert_eq!(counts(200), [1, 20, 100, 200]);
        assert_eq!(counts(3), [1, 1, 2, 3]);
        assert_eq!(counts(1), [1, 1, 1, 1]);
        assert_eq!(counts(0), [0, 0, 0, 0]);
        // A canary larger than a step keeps the step from shrinking the set.
        let big = Plan::new(5, vec![1, 100]).unwrap();
        assert_eq!(
            (0..=2).map(|s| big.awake_count(s, 20)).collect::<Vec<_>>(),
            [5, 5, 20]
        );
        // Stages past the last stay at 100%.
        assert_eq!(p.awake_count(9, 7), 7);
    }

    #[test]
    fn stages_grow_and_the_canary_is_stable() {
        let p = Plan::new(1, vec![10, 50, 100]).unwrap();
        let all = targets(40);
        let stage = |s| p.members(s, &all).into_iter().cloned().collect::<Vec<_>>();
        let (s0, s1, s2, s3) = (stage(0), stage(1), stage(2), stage(3));
        assert_eq!((s0.len(), s1.len(), s2.len(), s3.len()), (1, 4, 20, 40));
        assert!(s1.starts_with(&s0) && s2.starts_with(&s1) && s3.starts_with(&s2));
        // The same on another "node" that lists the pods in another order.
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.swap(3, 17);
        let other: Vec<_> = p.members(1, &shuffled).into_iter().cloned().collect();
        assert_eq!(other, s1);
        // The order is the hash's, not the names': recorded values pin the hash.
        assert_eq!(rank("", ""), 0xaf63_bd4c_8601_b7df);
        assert_eq!(rank("uid-000", "app"), rank("uid-000", "app"));
        assert_ne!(rank("uid-000", "app"), rank("uid-000a", "pp"));
    }

    #[test]
    fn steps_and_durations_parse_or_say_why() {
        assert_eq!(parse_steps("10%,50%, 100%").unwrap(), [10, 50, 100]);
        assert_eq!(parse_steps("25,100").unwrap(), [25, 100]);
        assert_eq!(
            parse_steps("10%,half").unwrap_err(),
            "step `half` is not a whole percentage like 10%"
        );
        assert_eq!(
            Plan::new(1, vec![50, 10, 100]).unwrap_err(),
            "steps must rise: 50% is followed by 10%"
        );
        assert_eq!(
            Plan::new(1, vec![10, 50]).unwrap_err(),
            "the last step is 50%; end with 100% so every target is reached"
        );
        assert_eq!(
            Plan::new(1, vec![0, 100]).unwrap_err(),
            "step 0% is outside 1%..100%"
        );
        assert_eq!(
            Plan::new(1, vec![]).unwrap_err(),
            "no steps; give e.g. --steps 10%,50%,100%"
        );
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1s500ms").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "15", "15 minutes", "m", "1d", "-5s"] {
            assert_eq!(
                parse_duration(bad).unwrap_err(),
                format!("`{bad}` is not a duration like 30s, 15m or 1h30m")
            );
        }
    }
}
