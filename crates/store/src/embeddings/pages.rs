//! Embedding columns encoded straight into Parquet data pages.
//!
//! The parquet crate's column writers take fixed-length values (f16 is a 2-byte FIXED_LEN_BYTE_ARRAY
//! with the FLOAT16 logical type) one reference-counted buffer per value, which measured 8-10 ms per
//! image of 552k values: as long as the network's own work. A required, flat float column needs no
//! levels, dictionary or statistics, so its pages are only the values' bytes (PLAIN) or their byte
//! planes (BYTE_STREAM_SPLIT), optionally compressed. This module builds those pages, lets the crate
//! write their headers ([`SerializedPageWriter`]) and describes the chunk with the crate's metadata
//! types, so that the file writer splices it into the row group (`append_column`) like any other.

use padim_core::config::{Compression, FloatEncoding, ValueType};
use parquet::basic::{Compression as Codec, Encoding, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// Values per data page: 256 KiB of f16, 512 KiB of f32 (readers expect pages of about 1 MiB or less).
const PAGE_VALUES: usize = 128 * 1024;

/// A run of a column's values, as the writer was given them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::F32(v) => v.len(),
            Part::F16(v) => v.len(),
        }
    }
}

/// Encodes float column chunks; keeps its scratch buffers between chunks.
pub(crate) struct FloatColumnEncoder {
    value_type: ValueType,
    encoding: FloatEncoding,
    compression: Compression,
    halves: Vec<half::f16>,
    raw: Vec<u8>,
    compressed: Vec<u8>,
}

impl FloatColumnEncoder {
    pub(crate) fn new(value_type: ValueType, encoding: FloatEncoding, compression: Compression) -> Self {
        FloatColumnEncoder {
            value_type,
            encoding,
            compression,
            halves: Vec::new(),
            raw: Vec::new(),
            compressed: Vec::new(),
        }
    }

    /// The Parquet codec of the chunks.
    pub(crate) fn codec(compression: Compression) -> Codec {
        match compression {
            Compression::None => Codec::UNCOMPRESSED,
            Compression::Snappy => Codec::SNAPPY,
            Compression::Zstd => Codec::ZSTD(ZstdLevel::default()),
            Compression::Lz4 => Codec::LZ4_RAW,
        }
    }

    /// Encodes the column `descr` whose values are the concatenation of `parts`, in row order, into
    /// `out` (cleared first). The returned metadata's offsets are relative to `out`.
    pub(crate) fn encode(
        &mut self,
        descr: ColumnDescPtr,
        parts: &[Part],
        out: &mut Vec<u8>,
    ) -> Result<ColumnCloseResult, ParquetError> {
        out.clear();
        let n_values: usize = parts.iter().map(|p| p.len()).sum();
        let encoding = match self.encoding {
            FloatEncoding::Plain => Encoding::PLAIN,
            FloatEncoding::ByteStreamSplit => Encoding::BYTE_STREAM_SPLIT,
        };
        let (mut uncompressed_total, mut compressed_total) = (0i64, 0i64);
        // Readers that use the page index find each page by it (pages start on rows: no levels).
        let mut locations = Vec::new();
        let mut first_row = 0usize;
        let mut sink = TrackedWrite::new(out);
        {
            let mut pages = SerializedPageWriter::new(&mut sink);
            // Pages of whole parts (at least one), up to PAGE_VALUES values.
            let mut start = 0;
            while start < parts.len() {
                let mut end = start + 1;
                let mut count = parts[start].len();
                while end < parts.len() && count + parts[end].len() <= PAGE_VALUES {
                    count += parts[end].len();
                    end += 1;
                }
                self.encode_page(&parts[start..end], count)?;
                let uncompressed_size = self.raw.len();
                let buf = self.compress()?;
                let page = Page::DataPage {
                    buf,
                    num_values: count as u32,
                    encoding,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                };
                let spec = pages.write_page(CompressedPage::new(page, uncompressed_size))?;
                locations.push(PageLocation {
                    offset: spec.offset as i64,
                    compressed_page_size: spec.compressed_size as i32,
                    first_row_index: first_row as i64,
                });
                first_row += count;
                uncompressed_total += spec.uncompressed_size as i64;
                compressed_total += spec.compressed_size as i64;
                start = end;
            }
            pages.close()?;
        }
        std::io::Write::flush(&mut sink)?;
        let bytes_written = sink.bytes_written() as u64;
        drop(sink);
        let metadata = ColumnChunkMetaData::builder(descr)
            .set_compression(Self::codec(self.compression))
            .set_encodings(vec![encoding, Encoding::RLE])
            .set_num_values(n_values as i64)
            .set_total_compressed_size(compressed_total)
            .set_total_uncompressed_size(uncompressed_total)
            .set_data_page_offset(0)
            .build()?;
        Ok(ColumnCloseResult {
            bytes_written,
            rows_written: n_values as u64,
            metadata,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(OffsetIndexMetaData {
                page_locations: locations,
                unencoded_byte_array_data_bytes: None,
            }),
        })
    }

    /// The page body of `parts` (`count` values in all) into `self.raw`: each value's
    /// little-endian bytes as they are (PLAIN), or byte plane by byte plane (BYTE_STREAM_SPLIT:
    /// every value's first byte, then every value's second, ...).
    fn encode_page(&mut self, parts: &[Part], count: usize) -> Result<(), ParquetError> {
        let width = match self.value_type {
            ValueType::F16 => 2,
            ValueType::F32 => 4,
        };
        self.raw.clear();
        self.raw.resize(count * width, 0);
        let mut offset = 0;
        for part in parts {
            let n = part.len();
            match (self.value_type, part) {
                (ValueType::F16, Part::F32(values)) => {
                    self.halves.resize(n, half::f16::ZERO);
                    half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut self.halves[..], values);
                    let bits = half::slice::HalfFloatSliceExt::reinterpret_cast(&self.halves[..]);
                    check_finite(bits)?;
                    scatter(bits.iter().map(|b| b.to_le_bytes()), &mut self.raw, offset, count, self.encoding);
                }
                (ValueType::F16, Part::F16(values)) => {
                    let bits = half::slice::HalfFloatSliceExt::reinterpret_cast(*values);
                    check_finite(bits)?;
                    scatter(bits.iter().map(|b| b.to_le_bytes()), &mut self.raw, offset, count, self.encoding);
                }
                (ValueType::F32, Part::F32(values)) => {
                    scatter(values.iter().map(|v| v.to_le_bytes()), &mut self.raw, offset, count, self.encoding);
                }
                // Refused by the writer before it gets here; widened exactly if it ever did.
                (ValueType::F32, Part::F16(values)) => {
                    scatter(
                        values.iter().map(|v| v.to_f32().to_le_bytes()),
                        &mut self.raw,
                        offset,
                        count,
                        self.encoding,
                    );
                }
            }
            offset += n;
        }
        Ok(())
    }

    /// The page body of `self.raw`, compressed with the column's codec.
    fn compress(&mut self) -> Result<bytes::Bytes, ParquetError> {
        let external = |e: std::io::Error| ParquetError::External(Box::new(e));
        match self.compression {
            // The body moves into the page; the next page allocates its own.
            Compression::None => return Ok(bytes::Bytes::from(std::mem::take(&mut self.raw))),
            Compression::Zstd => {
                self.compressed = zstd::bulk::compress(&self.raw, 1).map_err(external)?;
            }
            Compression::Lz4 => self.compressed = lz4_flex::block::compress(&self.raw),
            Compression::Snappy => {
                self.compressed = snap::raw::Encoder::new()
                    .compress_vec(&self.raw)
                    .map_err(|e| ParquetError::External(Box::new(e)))?;
            }
        }
        Ok(bytes::Bytes::copy_from_slice(&self.compressed))
    }
}

/// An error when an f16 value is infinite or NaN: a value beyond f16's range (65504) overflows,
/// and fit would fail on it later; f32 storage keeps it.
fn check_finite(bits: &[u16]) -> Result<(), ParquetError> {
    // All exponent bits set: infinity or NaN.
    if bits.iter().fold(false, |any, b| any | (b & 0x7c00 == 0x7c00)) {
        return Err(ParquetError::General(
            "an embedding value is beyond f16's range (65504) or not a number: set extract.dtype = \"f32\"".into(),
        ));
    }
    Ok(())
}

/// Writes `values` (the little-endian bytes of values `offset..` of a page of `count`) into the
/// page body `raw`: contiguous (PLAIN) or into byte planes of `count` bytes each (BYTE_STREAM_SPLIT).
fn scatter<const N: usize>(
    values: impl ExactSizeIterator<Item = [u8; N]>,
    raw: &mut [u8],
    offset: usize,
    count: usize,
    encoding: FloatEncoding,
) {
    match encoding {
        FloatEncoding::Plain => {
            let n = values.len();
            for (chunk, bytes) in raw[offset * N..(offset + n) * N].chunks_exact_mut(N).zip(values) {
                chunk.copy_from_slice(&bytes);
            }
        }
        FloatEncoding::ByteStreamSplit => {
            for (i, bytes) in values.enumerate() {
                for (plane, byte) in bytes.into_iter().enumerate() {
                    raw[plane * count + offset + i] = byte;
                }
            }
        }
    }
}
