//! An exact order book for one binary market: a YES bid ladder and a NO bid ladder.
//!
//! Each ladder is priced in its own contract ([`crate::tick::BookSnapshot`] explains the
//! convention). The book refuses what cannot be true of a real exchange book: a level below
//! zero, or a YES bid and a NO bid that would trade with each other (a crossed book). Either
//! means a message was lost or misapplied, and the caller must resync from a snapshot.

use std::collections::BTreeMap;

use crate::tick::{BookSnapshot, Level, Price, Qty, Side};

/// Why a book can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// A delta took a level below zero.
    #[error("level {side:?} {price} would go negative ({size})")]
    NegativeLevel {
        /// The ladder.
        side: Side,
        /// The level.
        price: Price,
        /// The size it would have had.
        size: Qty,
    },
    /// The best YES bid and best NO bid add up to $1 or more: they would have traded.
    #[error("crossed book: best yes bid {yes} + best no bid {no} >= $1")]
    Crossed {
        /// Best YES bid.
        yes: Price,
        /// Best NO bid.
        no: Price,
    },
}

/// Resting size per price level on both ladders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderBook {
    yes: BTreeMap<Price, Qty>,
    no: BTreeMap<Price, Qty>,
}

impl OrderBook {
    /// A book holding exactly the snapshot's levels (zero-size levels are skipped).
    pub fn from_snapshot(snapshot: &BookSnapshot) -> Result<OrderBook, BookError> {
        let mut book = OrderBook::default();
        for (side, levels) in [(Side::Yes, &snapshot.yes), (Side::No, &snapshot.no)] {
            for &(price, size) in levels {
                if size.0 < 0 {
                    return Err(BookError::NegativeLevel { side, price, size });
                }
                if size.0 > 0 {
                    book.ladder_mut(side).insert(price, size);
                }
            }
        }
        book.check_crossed()?;
        Ok(book)
    }

    /// Applies a change of resting size at one level. On error the book is left unchanged
    /// for a negative level, and changed (but crossed) for a crossed book.
    pub fn apply(&mut self, side: Side, price: Price, delta: Qty) -> Result<(), BookError> {
        let ladder = self.ladder_mut(side);
        let size = Qty(ladder.get(&price).map_or(0, |q| q.0) + delta.0);
        match size.0 {
            n if n < 0 => return Err(BookError::NegativeLevel { side, price, size }),
            0 => {
                ladder.remove(&price);
            }
            _ => {
                ladder.insert(price, size);
            }
        }
        self.check_crossed()
    }

    /// Best (highest) bid of a ladder.
    pub fn best(&self, side: Side) -> Option<Level> {
        self.ladder(side).iter().next_back().map(|(&p, &q)| (p, q))
    }

    /// Resting size at one level (zero when absent).
    pub fn size_at(&self, side: Side, price: Price) -> Qty {
        self.ladder(side).get(&price).copied().unwrap_or_default()
    }

    /// The whole book, ascending on both ladders.
    pub fn snapshot(&self) -> BookSnapshot {
        BookSnapshot {
            yes: self.yes.iter().map(|(&p, &q)| (p, q)).collect(),
            no: self.no.iter().map(|(&p, &q)| (p, q)).collect(),
        }
    }

    fn check_crossed(&self) -> Result<(), BookError> {
        if let (Some((yes, _)), Some((no, _))) = (self.best(Side::Yes), self.best(Side::No))
            && yes.0 + no.0 >= Price::ONE_DOLLAR.0
        {
            return Err(BookError::Crossed { yes, no });
        }
        Ok(())
    }

    fn ladder(&self, side: Side) -> &BTreeMap<Price, Qty> {
        match side {
            Side::Yes => &self.yes,
            Side::No => &self.no,
        }
    }

    fn ladder_mut(&mut self, side: Side) -> &mut BTreeMap<Price, Qty> {
        match side {
            Side::Yes => &mut self.yes,
            Side::No => &mut self.no,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(yes: &[(i64, i64)], no: &[(i64, i64)]) -> BookSnapshot {
        let conv = |v: &[(i64, i64)]| v.iter().map(|&(p, q)| (Price(p), Qty(q))).collect();
        BookSnapshot { yes: conv(yes), no: conv(no) }
    }

    #[test]
    fn deltas_add_remove_and_drop_empty_levels() {
        let mut book = OrderBook::from_snapshot(&snap(&[(4000, 100)], &[(5000, 300)])).unwrap();
        book.apply(Side::Yes, Price(4100), Qty(250)).unwrap();
        book.apply(Side::No, Price(5000), Qty(-300)).unwrap();
        assert_eq!(book.snapshot(), snap(&[(4000, 100), (4100, 250)], &[]));
        assert_eq!(book.best(Side::Yes), Some((Price(4100), Qty(250))));
    }

    #[test]
    fn negative_level_is_refused_and_leaves_the_book_alone() {
        let mut book = OrderBook::from_snapshot(&snap(&[(4000, 100)], &[])).unwrap();
        let err = book.apply(Side::Yes, Price(4000), Qty(-101)).unwrap_err();
        assert!(matches!(err, BookError::NegativeLevel { .. }));
        assert_eq!(book.size_at(Side::Yes, Price(4000)), Qty(100));
    }

    #[test]
    fn a_yes_and_no_bid_summing_to_a_dollar_is_crossed() {
        let mut book = OrderBook::from_snapshot(&snap(&[(6000, 100)], &[(3900, 100)])).unwrap();
        let err = book.apply(Side::No, Price(4000), Qty(1)).unwrap_err();
        assert_eq!(err, BookError::Crossed { yes: Price(6000), no: Price(4000) });
        assert!(OrderBook::from_snapshot(&snap(&[(6000, 1)], &[(4000, 1)])).is_err());
    }
}
