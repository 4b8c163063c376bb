//! `memory_limit`: one setting that sizes what Kiungo holds in flight.
//!
//! Kiungo's memory beyond a fixed part (code, runtime, pools, mappings,
//! SQLite's page caches) follows the events it holds at once. Events from
//! RabbitMQ are acknowledged only once committed, so the broker's unacked
//! window, `rabbitmq.prefetch` per queue, bounds every event between the
//! broker and the store (in the mapper's channel, the committer's channel
//! and the batch being committed); `ingest.max_events` sets how many of
//! them one transaction writes, and so the statement memory of a commit.
//!
//! Given a limit, [`MemoryBudget::plan`] caps both: the batch first (a
//! quarter of what fits, at most the configured one), then the prefetch of
//! each queue from what is left. The configured values are upper bounds:
//! a limit only ever lowers them. The per-event figures come from
//! measurements of `kiungo-loadgen` (BENCHMARKS.md, "The commit alone,
//! and memory following `memory_limit`"); HTTP ingest is bounded by `http.max_connections` and
//! its body limit, not by this.

use std::fmt;

use serde::Deserialize;

/// Memory Kiungo uses before holding any event: the binary's code, the
/// runtimes, connection pools, mappings, SQLite's page caches and what
/// the allocator keeps (fitted to peak RSS under load with the shipped
/// packs, BENCHMARKS.md).
pub const BASE_BYTES: u64 = 82 * MIB;

/// Memory per event held between the broker and the store (the AMQP
/// delivery, its parsed payload and mapped outputs), as measured.
pub const PER_EVENT_BYTES: u64 = 12 * KIB;

/// Memory per event of a commit batch beyond what the event itself holds
/// (the multi-row statements' text and binds, the rows read back, the
/// pages SQLite dirties in one transaction), as measured: a batch costs
/// several times what waiting costs.
pub const PER_BATCH_EVENT_BYTES: u64 = 64 * KIB;

/// The smallest window per queue a limit may leave: below it the broker
/// round trip, not the store, sets the pace.
pub const MIN_PREFETCH: u16 = 16;

/// The smallest batch a limit may leave.
pub const MIN_BATCH: usize = 16;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A size in bytes, written as a number of bytes or with a unit:
/// `96MiB`, `100MB`, `1GiB`, `512KiB`, `200M` (binary units; `MB` and
/// `M` read as MiB, as Kubernetes' `Mi` and most people mean).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `96MiB`, `100 MB`, `1GiB`, `65536`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a size such as 96MiB or 1GiB"))?;
        let unit = unit.trim();
        let factor = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "ki" | "kib" => KIB,
            "m" | "mb" | "mi" | "mib" => MIB,
            "g" | "gb" | "gi" | "gib" => 1024 * MIB,
            _ => {
                return Err(format!(
                    "`{text}`: unknown unit `{unit}` (use KiB, MiB or GiB)"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(Self)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(f, "{} KiB", self.0.div_ceil(KIB))
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// What a limit leaves for the in-flight settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// `rabbitmq.prefetch`, per queue.
    pub prefetch: u16,
    /// `ingest.max_events`.
    pub max_events: usize,
}

impl MemoryBudget {
    /// The smallest limit that leaves the minimum window on `queues`
    /// queues and the minimum batch.
    pub fn minimum(queues: usize) -> ByteSize {
        let queues = queues.max(1) as u64;
        ByteSize(
            BASE_BYTES
                + queues * u64::from(MIN_PREFETCH) * PER_EVENT_BYTES
                + MIN_BATCH as u64 * PER_BATCH_EVENT_BYTES,
        )
    }

    /// Caps `prefetch` (per queue, on `queues` queues) and `max_events`
    /// so that Kiungo stays within `limit`; `Err` names the smallest limit
    /// that would do when `limit` is below it.
    pub fn plan(
        limit: ByteSize,
        queues: usize,
        prefetch: u16,
        max_events: usize,
    ) -> Result<Self, String> {
        let minimum = Self::minimum(queues);
        if limit < minimum {
            return Err(format!(
                "{limit} is below the {minimum} Kiungo needs with {} queue(s): {} fixed, \
                 then {} per event in flight, at least {MIN_PREFETCH} per queue and a batch of {MIN_BATCH}",
                queues.max(1),
                ByteSize(BASE_BYTES),
                ByteSize(PER_EVENT_BYTES),
            ));
        }
        let queues = queues.max(1) as u64;
        let spare = limit.0 - BASE_BYTES;
        // Each batched event is also an event in flight.
        let per_batched = PER_EVENT_BYTES + PER_BATCH_EVENT_BYTES;
        let batch_fit = usize::try_from(spare / 4 / per_batched).unwrap_or(usize::MAX);
        let max_events = max_events.min(batch_fit).max(MIN_BATCH);
        let left = spare.saturating_sub(max_events as u64 * PER_BATCH_EVENT_BYTES);
        let window_fit = left / PER_EVENT_BYTES / queues;
        let prefetch = u64::from(prefetch)
            .min(window_fit)
            .max(u64::from(MIN_PREFETCH));
        Ok(Self {
            prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
            max_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(ByteSize::parse("65536"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("96MiB"), Ok(ByteSize(96 * MIB)));
        assert_eq!(ByteSize::parse("100 MB"), Ok(ByteSize(100 * MIB)));
        assert_eq!(ByteSize::parse("1Gi"), Ok(ByteSize(1024 * MIB)));
        assert_eq!(ByteSize::parse("512kib"), Ok(ByteSize(512 * KIB)));
        let err = ByteSize::parse("100 parsecs").expect_err("unit");
        assert!(err.contains("unknown unit `parsecs`"), "{err}");
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
        assert_eq!(ByteSize(96 * MIB).to_string(), "96 MiB");
    }

    #[test]
    fn a_generous_limit_keeps_the_configured_values() {
        let plan = MemoryBudget::plan(ByteSize(4096 * MIB), 4, 500, 500).expect("fits");
        assert_eq!(
            plan,
            MemoryBudget {
                prefetch: 500,
                max_events: 500
            }
        );
    }

    #[test]
    fn a_tight_limit_caps_both_and_stays_within_it() {
        for queues in [1, 4, 12] {
            for mib in [100u64, 128, 256] {
                let limit = ByteSize(mib * MIB);
                let plan = MemoryBudget::plan(limit, queues, 500, 500).expect("fits");
                let used = BASE_BYTES
                    + queues as u64 * u64::from(plan.prefetch) * PER_EVENT_BYTES
                    + plan.max_events as u64 * PER_BATCH_EVENT_BYTES;
                assert!(
                    used <= limit.0,
                    "{queues} queues, {mib} MiB: {plan:?} uses {used}"
                );
                assert!(plan.prefetch >= MIN_PREFETCH && plan.max_events >= MIN_BATCH);
                assert!(plan.prefetch <= 500 && plan.max_events <= 500);
            }
        }
        // Four queues in 100 MiB cannot keep a window of 500 each.
        let plan = MemoryBudget::plan(ByteSize(100 * MIB), 4, 500, 500).expect("fits");
        assert!(plan.prefetch < 500, "{plan:?}");
    }

    #[test]
    fn a_limit_below_the_minimum_says_what_would_do() {
        let err = MemoryBudget::plan(ByteSize(32 * MIB), 4, 500, 500).expect_err("too small");
        let minimum = MemoryBudget::minimum(4).to_string();
        assert!(err.starts_with("32 MiB is below the"), "{err}");
        assert!(err.contains(&minimum), "{err}");
        assert!(MemoryBudget::plan(MemoryBudget::minimum(4), 4, 500, 500).is_ok());
    }
}
