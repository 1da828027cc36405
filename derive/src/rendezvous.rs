//! Where the partitions of one per-trace walk meet when their inputs end.

use std::sync::{Mutex, PoisonError};

/// Where the parts of one walk over stored spans (the partitions of a query) meet when their inputs end. Each
/// partition deposits what it could not finish alone (a consumer whose producer is in another
/// trace, say); the last partition to arrive gets every deposit back and finishes the work.
pub struct Rendezvous<D> {
    partitions: usize,
    /// Partitions arrived so far in this execution, and their deposits.
    state: Mutex<(usize, Vec<D>)>,
}

impl<D> Rendezvous<D> {
    pub fn new(partitions: usize) -> Self {
        Self { partitions: partitions.max(1), state: Mutex::new((0, Vec::new())) }
    }

    /// Deposits `deposit`. The last partition to arrive gets all deposits (its own included), and the
    /// rendezvous is ready for a new execution of the plan.
    pub fn arrive(&self, deposit: D) -> Option<Vec<D>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1.push(deposit);
        state.0 += 1;
        if state.0 < self.partitions {
            return None;
        }
        state.0 = 0;
        Some(std::mem::take(&mut state.1))
    }
}

#[cfg(test)]
mod tests {
    use super::Rendezvous;

    fn numbers(mut deposits: Vec<u32>) -> Vec<u32> {
        deposits.sort_unstable();
        deposits
    }

    #[test]
    fn the_last_partition_to_arrive_gets_every_deposit_and_the_next_execution_starts_afresh() {
        let rendezvous = Rendezvous::new(3);
        assert!(rendezvous.arrive(2u32).is_none());
        assert!(rendezvous.arrive(0u32).is_none());
        assert_eq!(numbers(rendezvous.arrive(1u32).expect("the third of three")), vec![0, 1, 2]);
        // A second execution of the same plan.
        assert!(rendezvous.arrive(5u32).is_none());
        assert!(rendezvous.arrive(4u32).is_none());
        assert_eq!(numbers(rendezvous.arrive(3u32).expect("the third of three")), vec![3, 4, 5]);
    }

    #[test]
    fn a_single_partition_finishes_alone() {
        let rendezvous = Rendezvous::new(1);
        assert_eq!(numbers(rendezvous.arrive(7u32).expect("the only one")), vec![7]);
    }
}
