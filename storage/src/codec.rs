//! The compression codecs of RecordBatch v2 (`attributes & 0x07`: 1 gzip, 2 snappy,
//! 3 lz4, 4 zstd): inflating a batch's records within a bound, and deflating rewritten
//! records with the codec they came with.
//!
//! Only compaction (and the compacted-topic key check on append) ever looks inside
//! compressed batches; appends and reads store and serve them as they are. This module
//! owns nothing but the byte formats Kafka uses for each codec.

use std::io::{self, Read, Write};

use thiserror::Error;

/// Codec id of gzip.
pub const GZIP: u8 = 1;
/// Codec id of snappy.
pub const SNAPPY: u8 = 2;
/// Codec id of lz4.
pub const LZ4: u8 = 3;
/// Codec id of zstd.
pub const ZSTD: u8 = 4;

/// Kafka's snappy framing (xerial's `SnappyOutputStream`): magic, version, compatible
/// version, then `[u32 length][raw snappy block]…`.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
/// Bytes of the xerial header: magic plus two i32 versions.
const XERIAL_HEADER_BYTES: usize = 16;
/// Version fields xerial writes (and Kafka's Java client).
const XERIAL_VERSION: i32 = 1;
/// Uncompressed bytes per xerial block (xerial's default block size).
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;
/// log2 of the largest zstd window decoded (the decoder allocates it): 16 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// zstd level used when rewriting (Kafka's default `compression.zstd.level`).
const ZSTD_LEVEL: i32 = 3;
/// lz4 level used when rewriting (0 is lz4's fast default, as librdkafka uses).
const LZ4_LEVEL: u32 = 0;
/// Bytes inflated per read.
const INFLATE_CHUNK_BYTES: usize = 64 * 1024;

/// Why a batch's records could not be inflated or deflated.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The codec id is not one Kafka defines.
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    /// The records would inflate past the caller's bound (a decompression bomb, or
    /// simply a batch too large to rewrite).
    #[error("records inflate past {0} bytes")]
    TooLarge(usize),
    /// The compressed bytes do not decode.
    #[error("cannot decode {codec} records: {reason}")]
    Corrupt {
        /// Codec name.
        codec: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// Compressing failed (only on I/O-like failures of the encoders).
    #[error("cannot encode records: {0}")]
    Encode(#[from] io::Error),
}

fn codec_name(codec: u8) -> &'static str {
    match codec {
        GZIP => "gzip",
        SNAPPY => "snappy",
        LZ4 => "lz4",
        ZSTD => "zstd",
        _ => "unknown",
    }
}

fn corrupt(codec: u8, e: impl ToString) -> CodecError {
    CodecError::Corrupt {
        codec: codec_name(codec),
        reason: e.to_string(),
    }
}

/// Reads `r` to its end, failing past `max_bytes`.
fn read_bounded(codec: u8, r: &mut dyn Read, max_bytes: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; INFLATE_CHUNK_BYTES];
    loop {
        let n = r.read(&mut chunk).map_err(|e| corrupt(codec, e))?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max_bytes {
            return Err(CodecError::TooLarge(max_bytes));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Appends one raw snappy block to `out`, failing if `out` would pass `max_bytes`.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, max_bytes: usize) -> Result<(), CodecError> {
    let len = snap::raw::decompress_len(block).map_err(|e| corrupt(SNAPPY, e))?;
    if out.len() + len > max_bytes {
        return Err(CodecError::TooLarge(max_bytes));
    }
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| corrupt(SNAPPY, e))?;
    out.truncate(start + written);
    Ok(())
}

/// Whether snappy-compressed records use xerial framing (the Java client's) rather than
/// one raw block (librdkafka's).
pub fn is_xerial(data: &[u8]) -> bool {
    data.starts_with(XERIAL_MAGIC)
}

fn unsnappy(data: &[u8], max_bytes: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    if !is_xerial(data) {
        snappy_block(data, &mut out, max_bytes)?;
        return Ok(out);
    }
    let mut rest = data
        .get(XERIAL_HEADER_BYTES..)
        .ok_or_else(|| corrupt(SNAPPY, "short xerial header"))?;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(SNAPPY, "short xerial block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = tail
            .get(..len)
            .ok_or_else(|| corrupt(SNAPPY, "xerial block past the end"))?;
        snappy_block(block, &mut out, max_bytes)?;
        rest = &tail[len..];
    }
    Ok(out)
}

/// Inflates the records section of a batch compressed with `codec`, never holding more
/// than `max_bytes` of output.
///
/// # Errors
/// `UnknownCodec`, `TooLarge` past the bound, `Corrupt` if the bytes do not decode.
pub fn decompress(codec: u8, data: &[u8], max_bytes: usize) -> Result<Vec<u8>, CodecError> {
    match codec {
        GZIP => read_bounded(
            codec,
            &mut flate2::read::MultiGzDecoder::new(data),
            max_bytes,
        ),
        SNAPPY => unsnappy(data, max_bytes),
        LZ4 => {
            let mut d = lz4::Decoder::new(data).map_err(|e| corrupt(codec, e))?;
            read_bounded(codec, &mut d, max_bytes)
        }
        ZSTD => {
            let mut d = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt(codec, e))?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(codec, e))?;
            read_bounded(codec, &mut d, max_bytes)
        }
        other => Err(CodecError::UnknownCodec(other)),
    }
}

/// Compresses `records` with `codec`. `original` is the compressed records the batch
/// had before, so snappy keeps the framing the producer chose (xerial or raw).
///
/// lz4 output is a standard LZ4 frame with independent 64 KiB blocks and no checksums,
/// which both the Java client's `KafkaLZ4BlockInputStream` and librdkafka read.
///
/// # Errors
/// `UnknownCodec`, or an encoder failure.
pub fn compress(codec: u8, records: &[u8], original: &[u8]) -> Result<Vec<u8>, CodecError> {
    match codec {
        GZIP => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(records)?;
            Ok(e.finish()?)
        }
        SNAPPY if is_xerial(original) => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + records.len() / 2);
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
            out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for block in records.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| CodecError::Encode(io::Error::other(e)))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        SNAPPY => snap::raw::Encoder::new()
            .compress_vec(records)
            .map_err(|e| CodecError::Encode(io::Error::other(e))),
        LZ4 => {
            let mut e = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .level(LZ4_LEVEL)
                .build(Vec::new())?;
            e.write_all(records)?;
            let (out, result) = e.finish();
            result?;
            Ok(out)
        }
        ZSTD => Ok(zstd::bulk::compress(records, ZSTD_LEVEL)?),
        other => Err(CodecError::UnknownCodec(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, &data, &[]).unwrap();
            assert!(packed.len() < data.len(), "{}", codec_name(codec));
            assert_eq!(decompress(codec, &packed, usize::MAX).unwrap(), data);
        }
    }

    #[test]
    fn snappy_keeps_the_framing_it_was_given() {
        let data = sample();
        let xerial = compress(SNAPPY, &data, XERIAL_MAGIC).unwrap();
        assert!(is_xerial(&xerial));
        assert_eq!(decompress(SNAPPY, &xerial, usize::MAX).unwrap(), data);
        let raw = compress(SNAPPY, &data, b"raw").unwrap();
        assert!(!is_xerial(&raw));
        assert_eq!(decompress(SNAPPY, &raw, usize::MAX).unwrap(), data);
    }

    #[test]
    fn inflating_stops_at_the_bound() {
        let zeros = vec![0u8; 1 << 20];
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, &zeros, &[]).unwrap();
            assert!(matches!(
                decompress(codec, &packed, 1000),
                Err(CodecError::TooLarge(1000))
            ));
        }
        assert!(matches!(
            decompress(7, b"", 10),
            Err(CodecError::UnknownCodec(7))
        ));
        assert!(matches!(
            decompress(GZIP, b"not gzip", 10),
            Err(CodecError::Corrupt { .. })
        ));
    }
}
