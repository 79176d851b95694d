//! Whole row groups of an embeddings file read straight from their float pages.
//!
//! The float columns that [`super::pages`] writes are flat, required and PLAIN or
//! BYTE_STREAM_SPLIT, without a dictionary: a page is its values' bytes, compressed. The Arrow
//! reader decodes such a column value by value through its generic FIXED_LEN_BYTE_ARRAY path, then
//! to a Float16 array, which the reader converted again to f32 and copied into place: four passes
//! over every value, a third of score's CPU time beside the distances. Here the crate's page reader
//! decompresses each page, and its values go to f32 in one pass, straight to their place in the
//! batch. A file whose requested columns are anything else (format 1's Arrow-written columns, say)
//! is read by the Arrow reader as before.

use crate::{Store, StoreError};
use bytes::{Buf, Bytes};
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::column::reader::{get_column_reader, get_typed_column_reader};
use parquet::data_type::Int32Type;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use std::collections::VecDeque;
use std::sync::Arc;

/// How a requested float column's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    F16,
    F32,
}

/// Reads batches of whole row groups of an embeddings file, the float columns from their pages.
pub(crate) struct DirectReader {
    store: Store,
    key: String,
    url: String,
    metadata: Arc<ParquetMetaData>,
    /// Row groups still to read, in order.
    groups: VecDeque<usize>,
    /// The leaf column of each requested channel, in the order asked.
    columns: Vec<usize>,
    width: Width,
    n_patches: usize,
    images_per_batch: usize,
    /// A page's values as f32 (reused).
    page: Vec<f32>,
    /// A page's f16 bits (reused).
    bits: Vec<u16>,
}

/// A column chunk's bytes, at their offset in the file, for the crate's page reader.
struct ChunkBytes {
    start: u64,
    bytes: Bytes,
}

impl ChunkBytes {
    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let from = start
            .checked_sub(self.start)
            .map(|from| from as usize)
            .filter(|&from| from + length <= self.bytes.len())
            .ok_or_else(|| ParquetError::General(format!("bytes {start}+{length} are outside the column chunk")))?;
        Ok(self.bytes.slice(from..from + length))
    }
}

impl Length for ChunkBytes {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ChunkReader for ChunkBytes {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let length = (self.len().saturating_sub(start)) as usize;
        Ok(self.slice(start, length)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

/// Whether every chunk of `column` in `groups` holds only flat, required, dictionary-free PLAIN or
/// BYTE_STREAM_SPLIT pages of f16 (2-byte FIXED_LEN_BYTE_ARRAY) or f32 values; and which.
fn float_width(metadata: &ParquetMetaData, groups: &[usize], column: usize) -> Option<Width> {
    let descr = metadata.file_metadata().schema_descr().column(column);
    if descr.max_def_level() != 0 || descr.max_rep_level() != 0 {
        return None;
    }
    let width = match descr.physical_type() {
        PhysicalType::FIXED_LEN_BYTE_ARRAY if descr.type_length() == 2 => Width::F16,
        PhysicalType::FLOAT => Width::F32,
        _ => return None,
    };
    let plain = |chunk: &ColumnChunkMetaData| {
        chunk.dictionary_page_offset().is_none()
            && chunk.encodings().all(|e| matches!(e, Encoding::PLAIN | Encoding::BYTE_STREAM_SPLIT | Encoding::RLE))
    };
    groups.iter().all(|&g| plain(metadata.row_group(g).column(column))).then_some(width)
}

impl DirectReader {
    /// A reader of `groups` (in order) for the channels at leaf `columns`, or `None` when a
    /// requested column is not one this reader decodes or a row group holds more images than a
    /// batch (the Arrow reader then reads the file).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: &Store,
        key: &str,
        url: &str,
        metadata: Arc<ParquetMetaData>,
        groups: Vec<usize>,
        columns: Vec<usize>,
        n_patches: usize,
        images_per_batch: usize,
    ) -> Option<DirectReader> {
        let ids = metadata.file_metadata().schema_descr().column(0);
        if ids.physical_type() != PhysicalType::INT32 || ids.max_def_level() != 0 || ids.max_rep_level() != 0 {
            return None;
        }
        // A batch is whole row groups: each must fit in one, so that no batch is larger than asked.
        let (n_patches, images_per_batch) = (n_patches.max(1), images_per_batch.max(1));
        let fits = |&g: &usize| metadata.row_group(g).num_rows() as usize <= images_per_batch * n_patches;
        if !groups.iter().all(fits) {
            return None;
        }
        let widths: Vec<Width> = columns.iter().map(|&c| float_width(&metadata, &groups, c)).collect::<Option<_>>()?;
        let width = *widths.first()?;
        if widths.iter().any(|&w| w != width) {
            return None;
        }
        Some(DirectReader {
            store: store.clone(),
            key: key.to_string(),
            url: url.to_string(),
            metadata,
            groups: groups.into(),
            columns,
            width,
            n_patches,
            images_per_batch,
            page: Vec::new(),
            bits: Vec::new(),
        })
    }

    fn format_error(&self, message: String) -> StoreError {
        StoreError::Format { url: self.url.clone(), message }
    }

    /// The next batch: whole row groups, as many as `images_per_batch` holds (at least one). Fills
    /// `values` (`[images, channels, patches]`) and returns the images' ids; `None` at the end.
    pub(crate) fn next_batch(&mut self, values: &mut Vec<f32>) -> Result<Option<Vec<u32>>, StoreError> {
        let mut taken = Vec::new(); // (row group, its first image in the batch, its images)
        let mut images = 0;
        while let Some(&group) = self.groups.front() {
            let rows = self.metadata.row_group(group).num_rows() as usize;
            if !rows.is_multiple_of(self.n_patches) {
                return Err(self.format_error(format!(
                    "row group {group} of {rows} rows is not whole images of {} patches",
                    self.n_patches
                )));
            }
            let n = rows / self.n_patches;
            if !taken.is_empty() && images + n > self.images_per_batch {
                break;
            }
            taken.push((group, images, n));
            images += n;
            self.groups.pop_front();
        }
        if taken.is_empty() {
            return Ok(None);
        }
        // Every value is written below (a row group's columns each cover its rows, or the batch
        // is an error): a recycled buffer is not zeroed first.
        let size = images * self.columns.len() * self.n_patches;
        values.truncate(size);
        values.resize(size, 0.0);
        let mut ids = Vec::with_capacity(images);
        for (group, first, n) in taken {
            ids.extend(self.read_group(group, first, n, values)?);
        }
        Ok(Some(ids))
    }

    /// Reads row group `group` (`n` images) into `values` from image `first` of the batch; returns
    /// its image ids.
    fn read_group(&mut self, group: usize, first: usize, n: usize, values: &mut [f32]) -> Result<Vec<u32>, StoreError> {
        let (url, metadata) = (self.url.clone(), self.metadata.clone());
        let parquet_error = |e: ParquetError| StoreError::parquet(&url, e);
        let row_group = metadata.row_group(group);
        let leaves: Vec<usize> = std::iter::once(0).chain(self.columns.iter().copied()).collect();
        let ranges: Vec<std::ops::Range<u64>> = leaves
            .iter()
            .map(|&c| {
                let (start, length) = row_group.column(c).byte_range();
                start..start + length
            })
            .collect();
        let chunks = self.store.get_ranges(&self.key, &ranges)?;
        let rows = n * self.n_patches;
        let page_reader = |at: usize| -> Result<SerializedPageReader<ChunkBytes>, StoreError> {
            let chunk = ChunkBytes { start: ranges[at].start, bytes: chunks[at].clone() };
            SerializedPageReader::new(Arc::new(chunk), row_group.column(leaves[at]), rows, None).map_err(parquet_error)
        };
        // The ids: one per image (every patch row of an image holds its id).
        let descr = metadata.file_metadata().schema_descr().column(0);
        let mut reader = get_typed_column_reader::<Int32Type>(get_column_reader(descr, Box::new(page_reader(0)?)));
        let mut all_ids = Vec::with_capacity(rows);
        let (records, _, _) = reader.read_records(rows, None, None, &mut all_ids).map_err(parquet_error)?;
        if records != rows || all_ids.len() != rows {
            return Err(self.format_error(format!("row group {group}: {records} image ids for {rows} rows")));
        }
        let ids: Vec<u32> = all_ids.iter().step_by(self.n_patches).map(|&id| id as u32).collect();
        for k in 0..self.columns.len() {
            let mut pages = page_reader(k + 1)?;
            let mut row = 0;
            while let Some(page) = pages.get_next_page().map_err(parquet_error)? {
                let count = self.decode_page(page, group)?;
                if row + count > rows {
                    return Err(self.format_error(format!("row group {group}: more values than its {rows} rows")));
                }
                // Runs of consecutive patches of one image go to their place.
                let mut done = 0;
                while done < count {
                    let (image, patch) = ((row + done) / self.n_patches, (row + done) % self.n_patches);
                    let run = (self.n_patches - patch).min(count - done);
                    let at = ((first + image) * self.columns.len() + k) * self.n_patches + patch;
                    values[at..at + run].copy_from_slice(&self.page[done..done + run]);
                    done += run;
                }
                row += count;
            }
            if row != rows {
                return Err(self.format_error(format!("row group {group}: {row} values of a column for {rows} rows")));
            }
        }
        Ok(ids)
    }

    /// A data page's values into `self.page` (as f32); returns how many. Other pages are errors.
    fn decode_page(&mut self, page: Page, group: usize) -> Result<usize, StoreError> {
        let (buf, count, encoding) = match page {
            Page::DataPage { buf, num_values, encoding, .. } => (buf, num_values as usize, encoding),
            Page::DataPageV2 { buf, num_values, encoding, def_levels_byte_len, rep_levels_byte_len, .. } => {
                let levels = (def_levels_byte_len + rep_levels_byte_len) as usize;
                (buf.slice(levels.min(buf.len())..), num_values as usize, encoding)
            }
            Page::DictionaryPage { .. } => {
                return Err(self.format_error(format!("row group {group}: an embedding column has a dictionary")));
            }
        };
        let size = match self.width {
            Width::F16 => 2,
            Width::F32 => 4,
        };
        if buf.len() != count * size {
            return Err(self.format_error(format!(
                "row group {group}: a page of {count} values holds {} bytes, not {}",
                buf.len(),
                count * size
            )));
        }
        let split = match encoding {
            Encoding::PLAIN => false,
            Encoding::BYTE_STREAM_SPLIT => true,
            other => return Err(self.format_error(format!("row group {group}: a page encoded {other:?}"))),
        };
        self.page.resize(count, 0.0);
        match (self.width, split) {
            (Width::F16, false) => {
                self.bits.clear();
                self.bits.extend(buf.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])));
            }
            (Width::F16, true) => {
                let (low, high) = buf.split_at(count);
                self.bits.clear();
                self.bits.extend(low.iter().zip(high).map(|(&l, &h)| u16::from_le_bytes([l, h])));
            }
            (Width::F32, false) => {
                for (value, b) in self.page.iter_mut().zip(buf.chunks_exact(4)) {
                    *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            (Width::F32, true) => {
                let planes = [&buf[..count], &buf[count..2 * count], &buf[2 * count..3 * count], &buf[3 * count..]];
                for (i, value) in self.page.iter_mut().enumerate() {
                    *value = f32::from_le_bytes([planes[0][i], planes[1][i], planes[2][i], planes[3][i]]);
                }
            }
        }
        if self.width == Width::F16 {
            let halves: &[half::f16] = half::slice::HalfBitsSliceExt::reinterpret_cast(&self.bits[..]);
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(halves, &mut self.page);
        }
        Ok(count)
    }
}
