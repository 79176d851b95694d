//! Channel subsets: which embedding channels a model uses, and how a job's subset specifications
//! resolve to them (shared by extract, which may store only their union, and fit).

use rand::SeedableRng;

/// Why channels cannot be chosen as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot take {count} of {n_channels} channels")]
    Count { count: usize, n_channels: usize },
    #[error("an empty channel list")]
    Empty,
    #[error("channel {0} is listed twice")]
    Twice(usize),
    #[error("channel {channel} is out of range: the embeddings have {n_channels} channels")]
    OutOfRange { channel: usize, n_channels: usize },
}

/// A subset specification that does not resolve: its name, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subset `{name}`: {source}")]
pub struct SubsetError {
    pub name: String,
    // Not a `#[source]`: the message holds it, and an error chain would print it twice.
    pub source: ChannelError,
}

/// A sorted set of embedding channel indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelSubset(Vec<usize>);

impl ChannelSubset {
    /// `count` channels of `n_channels`, sampled uniformly without replacement with a ChaCha8 stream
    /// seeded by `seed` (reproducible on every platform), returned sorted.
    pub fn random(n_channels: usize, count: usize, seed: u64) -> Result<ChannelSubset, ChannelError> {
        if count == 0 || count > n_channels {
            return Err(ChannelError::Count { count, n_channels });
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut channels = rand::seq::index::sample(&mut rng, n_channels, count).into_vec();
        channels.sort_unstable();
        Ok(ChannelSubset(channels))
    }

    /// An explicit list; duplicates and out-of-range channels are errors.
    pub fn explicit(mut channels: Vec<usize>, n_channels: usize) -> Result<ChannelSubset, ChannelError> {
        channels.sort_unstable();
        if channels.is_empty() {
            return Err(ChannelError::Empty);
        }
        if let Some(window) = channels.windows(2).find(|w| w[0] == w[1]) {
            return Err(ChannelError::Twice(window[0]));
        }
        if let Some(&last) = channels.last()
            && last >= n_channels
        {
            return Err(ChannelError::OutOfRange { channel: last, n_channels });
        }
        Ok(ChannelSubset(channels))
    }

    /// All channels.
    pub fn all(n_channels: usize) -> ChannelSubset {
        ChannelSubset((0..n_channels).collect())
    }

    pub fn channels(&self) -> &[usize] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sorted union of several subsets: the channels one pass over the data must accumulate.
    pub fn union<'a>(subsets: impl IntoIterator<Item = &'a ChannelSubset>) -> ChannelSubset {
        let mut all: Vec<usize> = subsets.into_iter().flat_map(|s| s.0.iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        ChannelSubset(all)
    }

    /// Positions of this subset's channels within `superset` (which must contain them all).
    pub fn positions_in(&self, superset: &ChannelSubset) -> Option<Vec<usize>> {
        self.0.iter().map(|c| superset.0.binary_search(c).ok()).collect()
    }
}

/// A tapped layer's channels in the embedding: `first..first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerChannels {
    pub first: usize,
    pub count: usize,
}

/// Resolves each subset specification against an embedding of `n_channels` channels made of
/// `layers` (in embedding order). An error names the subset and says what is wrong.
pub fn resolve_subsets(
    specs: &[crate::config::SubsetSpec],
    layers: &[LayerChannels],
    n_channels: usize,
) -> Result<Vec<(String, ChannelSubset)>, SubsetError> {
    specs
        .iter()
        .map(|spec| {
            // The channels to choose from: every channel, or those of the named layers.
            let candidates: Option<Vec<usize>> = match &spec.layers {
                Some(chosen) if chosen.len() < layers.len() && spec.channels.is_none() => Some(
                    chosen
                        .iter()
                        .filter_map(|&l| layers.get(l.wrapping_sub(1)))
                        .flat_map(|layer| layer.first..layer.first + layer.count)
                        .collect(),
                ),
                _ => None,
            };
            let subset = if let Some(candidates) = candidates {
                let picked = match spec.count {
                    Some(count) => ChannelSubset::random(candidates.len(), count, spec.seed)
                        .map(|s| s.channels().iter().map(|&i| candidates[i]).collect()),
                    None => Ok(candidates),
                };
                picked.and_then(|channels| ChannelSubset::explicit(channels, n_channels))
            } else if spec.all {
                Ok(ChannelSubset::all(n_channels))
            } else if let Some(count) = spec.count {
                ChannelSubset::random(n_channels, count, spec.seed)
            } else {
                ChannelSubset::explicit(spec.channels.clone().unwrap_or_default(), n_channels)
            };
            subset.map(|s| (spec.name.clone(), s)).map_err(|source| SubsetError { name: spec.name.clone(), source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_subsets_are_reproducible_distinct_and_in_range() {
        let a = ChannelSubset::random(176, 40, 7).unwrap();
        assert_eq!(a, ChannelSubset::random(176, 40, 7).unwrap());
        assert_ne!(a, ChannelSubset::random(176, 40, 8).unwrap());
        assert_eq!(a.len(), 40);
        assert!(a.channels().windows(2).all(|w| w[0] < w[1]));
        assert!(a.channels().iter().all(|&c| c < 176));
        assert!(ChannelSubset::random(10, 11, 0).is_err());
    }

    #[test]
    fn union_and_positions() {
        let a = ChannelSubset::explicit(vec![5, 1], 10).unwrap();
        let b = ChannelSubset::explicit(vec![3, 5], 10).unwrap();
        let u = ChannelSubset::union([&a, &b]);
        assert_eq!(u.channels(), &[1, 3, 5]);
        assert_eq!(b.positions_in(&u), Some(vec![1, 2]));
        assert!(ChannelSubset::explicit(vec![1, 1], 10).is_err());
        assert!(ChannelSubset::explicit(vec![10], 10).is_err());
    }
}
