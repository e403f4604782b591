//! Per-core counters: plain cells bumped on the request path (no atomics: a core owns them),
//! read out as a snapshot of plain numbers, and snapshots summed over cores when someone
//! asks (Seastar's "operations go to the data, results are merged when read").
//!
//! [`counters!`] makes the three from one list of names, so the cells, the snapshot and the
//! sum cannot drift apart.

use std::cell::Cell;

/// `counters!(Cells => Values { a, b })` defines `Cells` (a `Cell<u64>` per name, with
/// [`Cells::values`](#) reading them out) and `Values` (a `u64` per name, with `add`, which
/// sums another core's into it). Doc comments on the names go to both.
macro_rules! counters {
    (
        $(#[$cm:meta])* $cells:ident => $(#[$vm:meta])* $values:ident {
            $($(#[$fm:meta])* $field:ident),+ $(,)?
        }
    ) => {
        $(#[$cm])*
        #[derive(Default, Debug)]
        pub struct $cells {
            $($(#[$fm])* pub $field: std::cell::Cell<u64>,)+
        }

        $(#[$vm])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $values {
            $($(#[$fm])* pub $field: u64,)+
        }

        impl $cells {
            /// The counts now.
            pub fn values(&self) -> $values {
                $values { $($field: self.$field.get(),)+ }
            }
        }

        impl $values {
            /// Adds another core's counts to these.
            pub fn add(&mut self, other: &$values) {
                $(self.$field += other.$field;)+
            }
        }
    };
}
pub(crate) use counters;

/// Counts one.
pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Counts `n`.
pub fn bump_by(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

#[cfg(test)]
mod tests {
    counters!(Cells => Values { a, b });

    #[test]
    fn cells_read_out_and_sum() {
        let (one, two) = (Cells::default(), Cells::default());
        super::bump(&one.a);
        super::bump_by(&one.b, 5);
        super::bump(&two.a);
        let mut sum = one.values();
        sum.add(&two.values());
        assert_eq!(sum, Values { a: 2, b: 5 });
    }
}
