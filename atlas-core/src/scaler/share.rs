//! Splitting a service-wide replica count between its slots by traffic
//! weight.

use std::fmt;

use crate::domain::{Slot, TrafficSplit};

/// A replica count for each of a service's two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotReplicas {
    /// Replicas of the blue slot.
    pub blue: u32,
    /// Replicas of the green slot.
    pub green: u32,
}

impl SlotReplicas {
    /// The count of `slot`.
    pub fn get(&self, slot: Slot) -> u32 {
        match slot {
            Slot::Blue => self.blue,
            Slot::Green => self.green,
        }
    }

    /// Sets the count of `slot`.
    pub fn set(&mut self, slot: Slot, replicas: u32) {
        match slot {
            Slot::Blue => self.blue = replicas,
            Slot::Green => self.green = replicas,
        }
    }

    /// Both counts added up.
    pub fn total(&self) -> u32 {
        self.blue.saturating_add(self.green)
    }
}

impl fmt::Display for SlotReplicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blue {} / green {}", self.blue, self.green)
    }
}

/// Splits `total` replicas between the slots in proportion to their weight
/// in `split`, by largest remainder (so the shares add up to `total`, ties
/// going to the stable slot), then raises each slot to its floor in
/// `floors`. A slot with traffic keeps at least one replica; a slot
/// without traffic gets its floor only (zero unless a rollout needs it).
///
/// The result can exceed `total` where floors demand it: a canary's
/// minimum scale is kept even when its weight's share is smaller.
///
/// ```
/// use atlas_core::scaler::{apportion, SlotReplicas};
/// use atlas_core::{Slot, TrafficSplit};
///
/// let split = TrafficSplit::new(Slot::Blue, 20)?; // 20 % to green
/// let shares = apportion(10, &split, SlotReplicas::default());
/// assert_eq!((shares.blue, shares.green), (8, 2));
/// // The canary's floor of 3 wins over its share of 2.
/// let floors = SlotReplicas { blue: 0, green: 3 };
/// assert_eq!(apportion(10, &split, floors), SlotReplicas { blue: 8, green: 3 });
/// # Ok::<(), atlas_core::Error>(())
/// ```
pub fn apportion(total: u32, split: &TrafficSplit, floors: SlotReplicas) -> SlotReplicas {
    let stable = split.stable();
    let canary = split.canary();
    let exact = |slot: Slot| u64::from(total) * u64::from(split.weight_of(slot).percent());
    let mut shares = SlotReplicas::default();
    // Whole shares first, then the one replica left over (with two slots at
    // most one remains) to the larger remainder.
    let (s, c) = (exact(stable), exact(canary));
    let (mut s_whole, mut c_whole) = ((s / 100) as u32, (c / 100) as u32);
    if s_whole + c_whole < total {
        if c % 100 > s % 100 {
            c_whole += 1;
        } else {
            s_whole += 1;
        }
    }
    shares.set(stable, s_whole);
    shares.set(canary, c_whole);
    for slot in [Slot::Blue, Slot::Green] {
        let with_traffic = split.weight_of(slot).percent() > 0;
        let share = if with_traffic {
            shares.get(slot).max(1)
        } else {
            0
        };
        shares.set(slot, share.max(floors.get(slot)));
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(stable: Slot, canary: u8) -> TrafficSplit {
        TrafficSplit::new(stable, canary).unwrap()
    }

    #[test]
    fn shares_follow_the_weights() {
        let none = SlotReplicas::default();
        assert_eq!(
            apportion(7, &TrafficSplit::all_to(Slot::Green), none),
            SlotReplicas { blue: 0, green: 7 }
        );
        assert_eq!(
            apportion(10, &split(Slot::Blue, 50), none),
            SlotReplicas { blue: 5, green: 5 }
        );
        // 7 × 30 % = 2.1 and 7 × 70 % = 4.9: the leftover goes to 4.9.
        assert_eq!(
            apportion(7, &split(Slot::Blue, 30), none),
            SlotReplicas { blue: 5, green: 2 }
        );
        // An even remainder goes to the stable slot.
        assert_eq!(
            apportion(3, &split(Slot::Green, 50), none),
            SlotReplicas { blue: 1, green: 2 }
        );
    }

    #[test]
    fn a_slot_with_traffic_keeps_one_replica_and_floors_win() {
        let none = SlotReplicas::default();
        assert_eq!(
            apportion(3, &split(Slot::Blue, 5), none),
            SlotReplicas { blue: 3, green: 1 }
        );
        assert_eq!(
            apportion(0, &split(Slot::Blue, 5), none),
            SlotReplicas { blue: 1, green: 1 }
        );
        let floors = SlotReplicas { blue: 0, green: 4 };
        assert_eq!(
            apportion(6, &TrafficSplit::all_to(Slot::Blue), floors),
            SlotReplicas { blue: 6, green: 4 },
            "a slot without traffic gets its floor"
        );
    }

    proptest! {
        #[test]
        fn shares_add_up_and_respect_floors(
            total in 0u32..10_000,
            canary in 0u8..=100,
            blue_floor in 0u32..50,
            green_floor in 0u32..50,
        ) {
            let s = split(Slot::Blue, canary);
            let none = apportion(total, &s, SlotReplicas::default());
            let with_traffic = u32::from(canary > 0) + u32::from(canary < 100);
            prop_assert!(none.total() >= total);
            prop_assert!(none.total() <= total + with_traffic);
            let (c, s_) = (u64::from(total) * u64::from(canary), u64::from(total) * u64::from(100 - canary));
            if (canary == 0 || c >= 100) && (canary == 100 || s_ >= 100) {
                prop_assert_eq!(none.total(), total, "no slot needed its minimum of one");
            }
            let floors = SlotReplicas { blue: blue_floor, green: green_floor };
            let floored = apportion(total, &s, floors);
            prop_assert!(floored.blue >= blue_floor && floored.green >= green_floor);
            prop_assert!(floored.blue >= none.blue && floored.green >= none.green);
            // Never more than one replica away from the exact share.
            let exact = f64::from(total) * f64::from(canary) / 100.0;
            if canary > 0 {
                prop_assert!((f64::from(none.green) - exact).abs() <= 1.0);
            }
        }
    }
}
