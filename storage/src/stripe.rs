//! Erasure coding of stripes (docs/ARCHITECTURE.md §5): k data chunks, each a whole data
//! file, plus m parity chunks (Reed-Solomon over GF(2^16), reed-solomon-simd).
//!
//! Data chunks keep their own lengths; parity is computed over the data chunks
//! zero-padded to one shard length (the longest chunk, rounded up to even, as the
//! codec needs). Any k of the k + m chunks rebuild every data chunk; the recorded
//! lengths trim the padding off again.

use crate::error::{Error, Result};

/// The shard length of a stripe whose data chunks have `data_lengths` bytes:
/// the longest, rounded up to an even number, at least 2.
pub fn shard_bytes(data_lengths: &[u64]) -> usize {
    let longest = data_lengths.iter().copied().max().unwrap_or(0) as usize;
    (longest + longest % 2).max(2)
}

fn padded(chunk: &[u8], shard_bytes: usize) -> Vec<u8> {
    let mut shard = Vec::with_capacity(shard_bytes);
    shard.extend_from_slice(chunk);
    shard.resize(shard_bytes, 0);
    shard
}

/// The `parity_count` parity chunks of the stripe `data` (in stripe order).
///
/// # Errors
/// [`Error::ErasureCoding`] if the codec refuses the shape (e.g. no data chunk).
pub fn encode_parity(data: &[&[u8]], parity_count: usize) -> Result<Vec<Vec<u8>>> {
    if parity_count == 0 {
        return Ok(Vec::new());
    }
    let lengths: Vec<u64> = data.iter().map(|d| d.len() as u64).collect();
    let shard = shard_bytes(&lengths);
    let shards: Vec<Vec<u8>> = data.iter().map(|d| padded(d, shard)).collect();
    reed_solomon_simd::encode(data.len(), parity_count, &shards)
        .map_err(|e| Error::ErasureCoding(e.to_string()))
}

/// Rebuilds every data chunk of a stripe from the chunks still available.
/// `data[i]` is data chunk i if readable, `parity[j]` parity chunk j;
/// `data_lengths` are the data chunks' recorded lengths.
///
/// # Errors
/// [`Error::StripeLost`] when fewer than k chunks are available (the data is
/// gone); [`Error::ErasureCoding`] if the codec fails.
pub fn reconstruct(
    data_lengths: &[u64],
    data: &[Option<&[u8]>],
    parity: &[Option<&[u8]>],
) -> Result<Vec<Vec<u8>>> {
    assert_eq!(data_lengths.len(), data.len(), "one length per data chunk");
    let available = data.iter().chain(parity).filter(|c| c.is_some()).count();
    if available < data.len() {
        return Err(Error::StripeLost {
            needed: data.len(),
            available,
        });
    }
    if data.iter().all(Option::is_some) {
        return Ok(data
            .iter()
            .map(|d| d.expect("all present").to_vec())
            .collect());
    }
    let shard = shard_bytes(data_lengths);
    let originals: Vec<(usize, Vec<u8>)> = data
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.map(|d| (i, padded(d, shard))))
        .collect();
    let recovery: Vec<(usize, &[u8])> = parity
        .iter()
        .enumerate()
        .filter_map(|(j, p)| p.map(|p| (j, p)))
        .collect();
    let restored = reed_solomon_simd::decode(
        data.len(),
        parity.len(),
        originals.iter().map(|(i, d)| (*i, d.as_slice())),
        recovery,
    )
    .map_err(|e| Error::ErasureCoding(e.to_string()))?;
    let mut chunks = Vec::with_capacity(data.len());
    for (i, chunk) in data.iter().enumerate() {
        let mut bytes = match chunk {
            Some(present) => present.to_vec(),
            None => restored
                .get(&i)
                .cloned()
                .ok_or_else(|| Error::ErasureCoding(format!("data chunk {i} was not restored")))?,
        };
        bytes.truncate(data_lengths[i] as usize);
        chunks.push(bytes);
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_k_of_k_plus_m_chunks_rebuild_the_data(
            data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
            parity_count in 0usize..3,
            seed in any::<u64>(),
        ) {
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let parity = encode_parity(&refs, parity_count).expect("encode");
            prop_assert_eq!(parity.len(), parity_count);
            let lengths: Vec<u64> = data.iter().map(|d| d.len() as u64).collect();
            // Lose `parity_count` chunks chosen by the seed.
            let total = data.len() + parity_count;
            let mut lost = std::collections::BTreeSet::new();
            let mut state = seed;
            while lost.len() < parity_count {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lost.insert((state >> 33) as usize % total);
            }
            let data_view: Vec<Option<&[u8]>> =
                refs.iter().enumerate().map(|(i, d)| (!lost.contains(&i)).then_some(*d)).collect();
            let parity_view: Vec<Option<&[u8]>> = parity
                .iter()
                .enumerate()
                .map(|(j, p)| (!lost.contains(&(data.len() + j))).then_some(p.as_slice()))
                .collect();
            let rebuilt = reconstruct(&lengths, &data_view, &parity_view).expect("reconstruct");
            prop_assert_eq!(rebuilt, data);
        }
    }

    #[test]
    fn losing_more_than_m_chunks_loses_the_stripe() {
        let data: Vec<&[u8]> = vec![b"first data file", b"second"];
        let parity = encode_parity(&data, 1).expect("encode");
        let result = reconstruct(&[15, 6], &[None, None], &[Some(&parity[0])]);
        assert!(
            matches!(
                result,
                Err(Error::StripeLost {
                    needed: 2,
                    available: 1
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn one_data_chunk_with_one_parity_chunk_is_a_mirror() {
        let data: Vec<&[u8]> = vec![b"odd length!"];
        let parity = encode_parity(&data, 1).expect("encode");
        let rebuilt = reconstruct(&[11], &[None], &[Some(&parity[0])]).expect("rebuild");
        assert_eq!(rebuilt, vec![b"odd length!".to_vec()]);
    }
}
