//! [`redistribute`]: the region weights that follow from which regions have
//! failed — a pure function, so the controller, a failback and a test all
//! compute the same shares.

use std::collections::BTreeSet;

use super::policy::Capacity;
use crate::error::{Error, Result};
use crate::region::{Region, RegionName, RegionSet, RegionWeights};

/// The weights for a set of failed regions, and what it took to get them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redistribution {
    /// Whole percentages adding up to 100; every failed region and every
    /// standby not activated has 0.
    pub weights: RegionWeights,
    /// The standby regions that take traffic, in the set's order.
    pub activated: Vec<RegionName>,
    /// The traffic the healthy regions cannot take even with every healthy
    /// standby activated, in whole percent (rounded up); 0 when capacity
    /// suffices. The traffic is then shared in proportion to the weights
    /// anyway: an overloaded region serves more than a region that takes
    /// nothing.
    pub short_by: u8,
}

/// Shares 100 % of the traffic among the regions of `regions` that are not
/// in `failed`.
///
/// 1. The healthy active regions take the traffic in proportion to their
///    configured weights: a failed region's share goes to the others in
///    proportion to theirs.
/// 2. If they cannot take it all — the sum of their
///    [capacities](Capacity::of) is under 100 % — healthy standby regions
///    are activated, in the set's order, until it is not, and share the
///    traffic in proportion to the weight they are sized for.
/// 3. When an explicit [`Capacity::max_share`] caps a region below its
///    proportional share, the excess goes to the others, again in
///    proportion to their weights.
/// 4. Shares are rounded to whole percents adding up to 100 by the largest
///    remainder method; ties go to the region listed first in the set. The
///    same input always gives the same weights.
///
/// With nothing failed it returns the set's
/// [normal weights](RegionSet::normal_weights).
///
/// ```
/// use std::collections::BTreeSet;
/// use atlas_core::failover::{Capacity, redistribute};
/// use atlas_core::region::{Region, RegionName, RegionSet};
/// let n = |s: &str| RegionName::new(s).unwrap();
/// let set = RegionSet::new(vec![
///     Region::active(n("us-east"), 40),
///     Region::active(n("eu-west"), 35),
///     Region::active(n("ap-south"), 25),
///     Region::standby(n("us-west"), 40),
/// ])?;
/// // ap-south fails: 25 % goes to us-east and eu-west as 40 : 35.
/// let r = redistribute(&set, &BTreeSet::from([n("ap-south")]), &Capacity::default())?;
/// assert_eq!(r.weights.to_string(), "ap-south=0% eu-west=47% us-east=53% us-west=0%");
/// assert!(r.activated.is_empty());
/// // us-east fails: 60 % of traffic for 90 % of capacity is fine, but the
/// // others can take only 52.5 + 37.5 = 90 %: the standby is activated.
/// let r = redistribute(&set, &BTreeSet::from([n("us-east")]), &Capacity::default())?;
/// assert_eq!(r.weights.to_string(), "ap-south=25% eu-west=35% us-east=0% us-west=40%");
/// assert_eq!(r.activated, [n("us-west")]);
/// # Ok::<(), atlas_core::Error>(())
/// ```
///
/// # Errors
/// [`Precondition`](Error::Precondition) when no region is left to take
/// traffic (every active region failed and no healthy standby has a weight
/// above 0).
pub fn redistribute(
    regions: &RegionSet,
    failed: &BTreeSet<RegionName>,
    capacity: &Capacity,
) -> Result<Redistribution> {
    let healthy = |r: &&Region| !failed.contains(&r.name) && r.weight > 0;
    let mut takers: Vec<&Region> = regions.active().filter(healthy).collect();
    let mut room: f64 = takers.iter().map(|r| capacity.of(r)).sum();
    let mut activated = Vec::new();
    for standby in regions.standby().filter(healthy) {
        if room >= 100.0 {
            break;
        }
        room += capacity.of(standby);
        takers.push(standby);
        activated.push(standby.name.clone());
    }
    if takers.is_empty() {
        let names: Vec<&str> = failed.iter().map(RegionName::as_str).collect();
        return Err(Error::precondition(format!(
            "no region can take traffic: {} failed and no healthy standby is left",
            names.join(", ")
        )));
    }
    let short_by = if room >= 100.0 {
        0
    } else {
        // In 0..=100 because room >= 0.
        (100.0 - room).ceil() as u8
    };
    let exact = if short_by > 0 {
        // Caps cannot all hold: share in proportion to the weights.
        proportional(&takers, &vec![f64::INFINITY; takers.len()])
    } else {
        let caps: Vec<f64> = takers.iter().map(|r| capacity.of(r)).collect();
        proportional(&takers, &caps)
    };
    let rounded = largest_remainder(&exact);
    let mut weights: Vec<(RegionName, u8)> = regions
        .regions()
        .iter()
        .map(|r| (r.name.clone(), 0))
        .collect();
    for (region, share) in takers.iter().zip(rounded) {
        if let Some(slot) = weights.iter_mut().find(|(n, _)| *n == region.name) {
            slot.1 = share;
        }
    }
    Ok(Redistribution {
        weights: RegionWeights::new(weights)?,
        activated,
        short_by,
    })
}

/// 100 % shared in proportion to the takers' weights, no share above its
/// cap (water filling: capped regions keep their cap, the rest is shared
/// again among the others). The caps must add up to at least 100.
fn proportional(takers: &[&Region], caps: &[f64]) -> Vec<f64> {
    let mut share = vec![0.0; takers.len()];
    let mut open: Vec<usize> = (0..takers.len()).collect();
    let mut left = 100.0;
    loop {
        let total: f64 = open.iter().map(|&i| f64::from(takers[i].weight)).sum();
        if open.is_empty() || total <= 0.0 {
            return share;
        }
        let capped: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| left * f64::from(takers[i].weight) / total > caps[i])
            .collect();
        if capped.is_empty() {
            for &i in &open {
                share[i] = left * f64::from(takers[i].weight) / total;
            }
            return share;
        }
        for &i in &capped {
            share[i] = caps[i];
            left -= caps[i];
        }
        open.retain(|i| !capped.contains(i));
    }
}

/// Whole percents adding up to 100 from `exact` shares adding up to 100:
/// each share rounded down, then one more percent to each of the largest
/// remainders; ties to the earlier share.
fn largest_remainder(exact: &[f64]) -> Vec<u8> {
    // Millionths of a percent, so 24.999999999 (a float's 25) rounds to 25.
    const UNIT: u64 = 1_000_000;
    let micro: Vec<u64> = exact
        .iter()
        .map(|s| (s.max(0.0) * UNIT as f64).round() as u64)
        .collect();
    let mut whole: Vec<u64> = micro.iter().map(|m| m / UNIT).collect();
    let sum: u64 = whole.iter().sum();
    let mut order: Vec<usize> = (0..exact.len()).collect();
    // Stable sort: equal remainders keep the set's order.
    order.sort_by_key(|&i| std::cmp::Reverse(micro[i] % UNIT));
    for &i in order.iter().take(100u64.saturating_sub(sum) as usize) {
        whole[i] += 1;
    }
    // Only float noise could leave the sum off 100; settle it on the
    // largest share so the result is always valid.
    let total: u64 = whole.iter().sum();
    if total != 100
        && let Some(max) = (0..whole.len()).max_by_key(|&i| (whole[i], std::cmp::Reverse(i)))
    {
        whole[max] = (whole[max] + 100).saturating_sub(total);
    }
    whole.into_iter().map(|w| w.min(100) as u8).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(s: &str) -> RegionName {
        RegionName::new(s).unwrap()
    }

    fn spec_set() -> RegionSet {
        RegionSet::new(vec![
            Region::active(n("us-east"), 40),
            Region::active(n("eu-west"), 35),
            Region::active(n("ap-south"), 25),
            Region::standby(n("us-west"), 40),
        ])
        .unwrap()
    }

    fn failed(names: &[&str]) -> BTreeSet<RegionName> {
        names.iter().map(|s| n(s)).collect()
    }

    #[test]
    fn nothing_failed_is_the_normal_weights() {
        let set = spec_set();
        let r = redistribute(&set, &BTreeSet::new(), &Capacity::default()).unwrap();
        assert_eq!(r.weights, set.normal_weights());
        assert!(r.activated.is_empty());
        assert_eq!(r.short_by, 0);
    }

    #[test]
    fn a_failed_share_goes_to_the_others_in_proportion() {
        let set = spec_set();
        let roomy = Capacity {
            factor: 2.0,
            ..Capacity::default()
        };
        // eu-west fails: 35 % goes to us-east and ap-south as 40 : 25;
        // 61.54 and 38.46 → 62 / 38.
        let r = redistribute(&set, &failed(&["eu-west"]), &roomy).unwrap();
        assert_eq!(r.weights.get(&n("us-east")), 62);
        assert_eq!(r.weights.get(&n("ap-south")), 38);
        assert_eq!(r.weights.get(&n("eu-west")), 0);
        assert!(r.activated.is_empty());
        // With the default factor the two can take 60 + 37.5 < 100 %.
        let r = redistribute(&set, &failed(&["eu-west"]), &Capacity::default()).unwrap();
        assert_eq!(r.activated, [n("us-west")]);
        assert_eq!(
            r.weights.to_string(),
            "ap-south=24% eu-west=0% us-east=38% us-west=38%"
        );
    }

    #[test]
    fn a_standby_is_activated_when_capacity_is_short() {
        let set = spec_set();
        let r = redistribute(&set, &failed(&["us-east"]), &Capacity::default()).unwrap();
        assert_eq!(r.activated, [n("us-west")]);
        assert_eq!(r.weights.get(&n("us-west")), 40);
        // A bigger factor: the two left can take it all.
        let roomy = Capacity {
            factor: 2.0,
            ..Capacity::default()
        };
        let r = redistribute(&set, &failed(&["us-east"]), &roomy).unwrap();
        assert!(r.activated.is_empty());
        assert_eq!(r.weights.get(&n("eu-west")), 58);
        assert_eq!(r.weights.get(&n("ap-south")), 42);
    }

    #[test]
    fn explicit_caps_push_the_excess_to_the_others() {
        let set = spec_set();
        let mut cap = Capacity {
            factor: 3.0,
            ..Capacity::default()
        };
        cap.max_share.insert(n("us-east"), 50);
        // Without the cap us-east would take 53 %.
        let r = redistribute(&set, &failed(&["ap-south"]), &cap).unwrap();
        assert_eq!(r.weights.get(&n("us-east")), 50);
        assert_eq!(r.weights.get(&n("eu-west")), 50);
    }

    #[test]
    fn short_capacity_is_reported_and_traffic_still_shared() {
        let set = spec_set();
        let r = redistribute(&set, &failed(&["us-east", "us-west"]), &Capacity::default()).unwrap();
        assert_eq!(r.short_by, 10, "52.5 + 37.5 = 90 %");
        assert_eq!(r.weights.get(&n("eu-west")), 58);
        assert_eq!(r.weights.get(&n("ap-south")), 42);
    }

    #[test]
    fn no_region_left_is_a_precondition_error() {
        let set = spec_set();
        let e = redistribute(
            &set,
            &failed(&["us-east", "eu-west", "ap-south", "us-west"]),
            &Capacity::default(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Precondition);
        assert!(e.to_string().contains("no region can take traffic"), "{e}");
    }

    #[test]
    fn only_standbys_left_take_everything() {
        let set = spec_set();
        let r = redistribute(
            &set,
            &failed(&["us-east", "eu-west", "ap-south"]),
            &Capacity::default(),
        )
        .unwrap();
        assert_eq!(r.weights.get(&n("us-west")), 100);
        assert_eq!(r.short_by, 40, "the standby is sized for 60 %");
    }

    /// A region set of 1–6 active regions with weights adding up to 100 and
    /// up to 2 standbys, plus which of them failed.
    fn sets() -> impl Strategy<Value = (RegionSet, BTreeSet<RegionName>)> {
        (
            proptest::collection::vec(1u32..100, 1..6),
            proptest::collection::vec(1u8..80, 0..3),
            proptest::collection::vec(any::<bool>(), 8),
        )
            .prop_map(|(raw, standbys, fail)| {
                let total: u32 = raw.iter().sum();
                let mut weights: Vec<u8> = raw.iter().map(|w| (w * 100 / total) as u8).collect();
                let sum: u32 = weights.iter().map(|&w| u32::from(w)).sum();
                weights[0] += (100 - sum) as u8;
                let mut regions: Vec<Region> = Vec::new();
                for (i, w) in weights.into_iter().enumerate() {
                    if w > 0 {
                        regions.push(Region::active(n(&format!("a{i}")), w));
                    }
                }
                for (i, w) in standbys.into_iter().enumerate() {
                    regions.push(Region::standby(n(&format!("s{i}")), w));
                }
                let failed = regions
                    .iter()
                    .zip(fail)
                    .filter(|(_, f)| *f)
                    .map(|(r, _)| r.name.clone())
                    .collect();
                (RegionSet::new(regions).unwrap(), failed)
            })
    }

    proptest! {
        #[test]
        fn shares_add_up_to_100_and_skip_failed_regions((set, failed) in sets(), factor in 1.0f64..3.0) {
            let cap = Capacity { factor, ..Capacity::default() };
            let Ok(r) = redistribute(&set, &failed, &cap) else {
                // Only when nothing is left to take traffic.
                prop_assert!(set.regions().iter().all(|r| failed.contains(&r.name) || r.role == crate::region::RegionRole::Standby && r.weight == 0));
                return Ok(());
            };
            let sum: u32 = r.weights.iter().map(|(_, w)| u32::from(w)).sum();
            prop_assert_eq!(sum, 100);
            for f in &failed {
                prop_assert_eq!(r.weights.get(f), 0, "failed region {} got traffic", f);
            }
            for s in set.standby() {
                if !r.activated.contains(&s.name) {
                    prop_assert_eq!(r.weights.get(&s.name), 0);
                }
            }
            // Deterministic.
            prop_assert_eq!(redistribute(&set, &failed, &cap).unwrap(), r.clone());
        }

        #[test]
        fn proportions_are_kept_within_rounding((set, failed) in sets()) {
            // No caps bind with a factor this large.
            let cap = Capacity { factor: 100.0, ..Capacity::default() };
            let Ok(r) = redistribute(&set, &failed, &cap) else { return Ok(()); };
            let takers: Vec<&Region> = set
                .regions()
                .iter()
                .filter(|x| {
                    r.activated.contains(&x.name)
                        || (!failed.contains(&x.name) && x.role == crate::region::RegionRole::Active)
                })
                .collect();
            let total: f64 = takers.iter().map(|x| f64::from(x.weight)).sum();
            for t in takers {
                let exact = 100.0 * f64::from(t.weight) / total;
                let got = f64::from(r.weights.get(&t.name));
                prop_assert!((got - exact).abs() < 1.0, "{}: {} vs exact {}", t.name, got, exact);
            }
        }
    }
}
