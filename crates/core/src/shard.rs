//! Shard `i` of `n`: which images a process of an array job handles.

use std::fmt;
use std::str::FromStr;

/// Zero-based shard `index` of `count`. Images are assigned in contiguous, deterministic ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole data set in one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// The half-open range of item positions (out of `n_items`) that this shard handles. The ranges
    /// of all shards are disjoint, cover every item and differ in length by at most one.
    pub fn range(&self, n_items: usize) -> std::ops::Range<usize> {
        let count = self.count as usize;
        let index = self.index as usize;
        let start = n_items * index / count;
        let end = n_items * (index + 1) / count;
        start..end
    }

    /// A stable, sortable file-name suffix: `00002-of-00004`.
    pub fn tag(&self) -> String {
        format!("{:05}-of-{:05}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("shard {index}/{count} is out of range: the index must be in 0..{count} and the count at least 1")]
    OutOfRange { index: u32, count: u32 },
    #[error("cannot parse shard `{0}`: write it as INDEX/COUNT, e.g. 0/4")]
    Syntax(String),
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(text: &str) -> Result<Shard, ShardError> {
        let (index, count) = text.split_once('/').ok_or_else(|| ShardError::Syntax(text.to_string()))?;
        let index = index.trim().parse().map_err(|_| ShardError::Syntax(text.to_string()))?;
        let count = count.trim().parse().map_err(|_| ShardError::Syntax(text.to_string()))?;
        Shard::new(index, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_the_items() {
        for n_items in [0usize, 1, 7, 100, 2001] {
            for count in 1..9u32 {
                let mut next = 0;
                for index in 0..count {
                    let range = Shard::new(index, count).unwrap().range(n_items);
                    assert_eq!(range.start, next);
                    assert!(range.len() <= n_items / count as usize + 1);
                    next = range.end;
                }
                assert_eq!(next, n_items);
            }
        }
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard { index: 2, count: 4 });
        assert!(matches!("4/4".parse::<Shard>(), Err(ShardError::OutOfRange { .. })));
        assert!(matches!("x".parse::<Shard>(), Err(ShardError::Syntax(_))));
        assert_eq!(Shard::ALL.tag(), "00000-of-00001");
    }
}
