//! Layer compression: the formats kiln writes (none, gzip, zstd) with their media types, and
//! detection by magic bytes of everything it reads (also xz and bzip2, for `kiln import`).

use std::fmt;
use std::io::{self, BufReader, Read, Write};

use super::LayerError;

/// How a layer blob is compressed when kiln writes it.
///
/// The bytes are part of the layer digest, so each variant pins its parameters: gzip at level 6
/// with no name and mtime 0 in the header (flate2 with the zlib-rs backend), zstd at level 3,
/// single-threaded, without a content checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

/// OCI media types of layers, by compression.
const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 media types, accepted on input.
const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

const GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_TAR,
            Compression::Gzip => OCI_TAR_GZIP,
            Compression::Zstd => OCI_TAR_ZSTD,
        }
    }

    /// The compression of a layer media type, OCI or Docker schema 2; `None` for a media type
    /// that is not a layer kiln can read.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            OCI_TAR | DOCKER_TAR => Some(Compression::None),
            OCI_TAR_GZIP | DOCKER_TAR_GZIP => Some(Compression::Gzip),
            OCI_TAR_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// The compression found at the start of a stream by [`decompress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectedCompression {
    Plain,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

impl DetectedCompression {
    /// Recognises the magic bytes at the start of a stream. Anything unrecognised is taken as
    /// plain (an uncompressed tar starts with a file name).
    pub fn detect(magic: &[u8]) -> DetectedCompression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            DetectedCompression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            DetectedCompression::Zstd
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            DetectedCompression::Xz
        } else if magic.starts_with(b"BZh") {
            DetectedCompression::Bzip2
        } else {
            DetectedCompression::Plain
        }
    }
}

impl fmt::Display for DetectedCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DetectedCompression::Plain => "uncompressed",
            DetectedCompression::Gzip => "gzip",
            DetectedCompression::Zstd => "zstd",
            DetectedCompression::Xz => "xz",
            DetectedCompression::Bzip2 => "bzip2",
        })
    }
}

/// Detects gzip / zstd / xz / bzip2 / plain by magic bytes and returns a reader of the
/// decompressed stream. Concatenated gzip members, zstd frames, xz streams and bzip2 streams
/// are read as one stream, as `tar` and `docker load` do. Reads at most six bytes before
/// returning; corrupt compressed data shows up as an error from the returned reader.
pub fn decompress<'a>(mut reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, LayerError> {
    let mut magic = [0u8; 6];
    let mut filled = 0;
    while filled < magic.len() {
        match reader.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(LayerError::Archive(error)),
        }
    }
    let format = DetectedCompression::detect(&magic[..filled]);
    let whole = io::Cursor::new(magic[..filled].to_vec()).chain(reader);
    Ok(match format {
        DetectedCompression::Plain => Box::new(whole),
        DetectedCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        DetectedCompression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::new(whole))
                .map_err(|source| LayerError::Decompress { format, source })?,
        ),
        DetectedCompression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(whole)),
        DetectedCompression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(whole)),
    })
}

/// Bytes handed to the encoder at a time. The gzip (zlib-rs) and zstd encoders emit different
/// bytes for the same data written in different pieces, and the bytes are a layer's digest: so
/// the compressor always feeds its encoder whole chunks of this size (the last one shorter),
/// whatever the sizes of the writes it gets.
pub(crate) const CHUNK: usize = 1 << 20;

enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

/// The compressing end of [`write_layer`](super::write_layer)'s pipeline, and of import and
/// load. Deterministic: the output depends only on the bytes written, not on how they were
/// split into writes or on calls to `flush` (which does not force compressed output).
pub(crate) struct Compressor<W: Write> {
    encoder: Encoder<W>,
    pending: Vec<u8>,
}

impl<W: Write> Compressor<W> {
    pub(crate) fn new(compression: Compression, inner: W) -> io::Result<Compressor<W>> {
        let encoder = match compression {
            Compression::None => Encoder::None(inner),
            // GzBuilder's defaults are what reproducibility needs: mtime 0, no file name, no
            // comment, OS byte 255 ("unknown").
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new().write(inner, flate2::Compression::new(GZIP_LEVEL)),
            ),
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, ZSTD_LEVEL)?;
                encoder.include_checksum(false)?;
                encoder.include_contentsize(false)?;
                Encoder::Zstd(encoder)
            }
        };
        let pending = match encoder {
            Encoder::None(_) => Vec::new(),
            Encoder::Gzip(_) | Encoder::Zstd(_) => Vec::with_capacity(CHUNK),
        };
        Ok(Compressor { encoder, pending })
    }

    fn write_pending(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::None(inner) => inner.write_all(&self.pending)?,
            Encoder::Gzip(encoder) => encoder.write_all(&self.pending)?,
            Encoder::Zstd(encoder) => encoder.write_all(&self.pending)?,
        }
        self.pending.clear();
        Ok(())
    }

    /// Writes what is pending and the trailer, and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.write_pending()?;
        match self.encoder {
            Encoder::None(inner) => Ok(inner),
            Encoder::Gzip(encoder) => encoder.finish(),
            Encoder::Zstd(encoder) => encoder.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Encoder::None(inner) = &mut self.encoder {
            return inner.write(buf);
        }
        let taken = buf.len().min(CHUNK - self.pending.len());
        self.pending.extend_from_slice(&buf[..taken]);
        if self.pending.len() == CHUNK {
            self.write_pending()?;
        }
        Ok(taken)
    }

    /// Flushes an uncompressed stream; a compressed one is left alone (a sync flush would change
    /// the compressed bytes).
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::None(inner) => inner.flush(),
            Encoder::Gzip(_) | Encoder::Zstd(_) => Ok(()),
        }
    }
}

impl<W: Write> std::fmt::Debug for Compressor<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_bytes_do_not_depend_on_how_the_input_is_written() {
        let data: Vec<u8> = (0..3 * CHUNK + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let whole = {
                let mut compressor = Compressor::new(compression, Vec::new()).unwrap();
                compressor.write_all(&data).unwrap();
                compressor.finish().unwrap()
            };
            let pieces = {
                let mut compressor = Compressor::new(compression, Vec::new()).unwrap();
                for piece in data.chunks(1000) {
                    compressor.write_all(piece).unwrap();
                    compressor.flush().unwrap();
                }
                compressor.finish().unwrap()
            };
            assert_eq!(whole, pieces, "{compression:?}");
        }
    }

    #[test]
    fn media_types_round_trip() {
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(
                Compression::from_media_type(compression.media_type()),
                Some(compression)
            );
        }
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
    }

    #[test]
    fn magic_bytes_are_recognised() {
        assert_eq!(
            DetectedCompression::detect(&[0x1f, 0x8b, 8]),
            DetectedCompression::Gzip
        );
        assert_eq!(
            DetectedCompression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            DetectedCompression::Zstd
        );
        assert_eq!(
            DetectedCompression::detect(b"\xfd7zXZ\0"),
            DetectedCompression::Xz
        );
        assert_eq!(
            DetectedCompression::detect(b"BZh9"),
            DetectedCompression::Bzip2
        );
        assert_eq!(
            DetectedCompression::detect(b"usr/"),
            DetectedCompression::Plain
        );
        assert_eq!(DetectedCompression::detect(b""), DetectedCompression::Plain);
    }

    /// The same bytes in, the same bytes out: pins flate2's backend (zlib-rs) and level 6, and
    /// libzstd's level 3 output, independently of any filesystem. Feature unification can
    /// switch flate2's backend silently; this catches it.
    #[test]
    fn compressed_bytes_match_golden_digests() {
        let mut input = Vec::new();
        for line in 0..20_000u32 {
            input.extend_from_slice(
                format!("{line:08} {}\n", line.wrapping_mul(2_654_435_761)).as_bytes(),
            );
        }
        let compress = |compression| {
            let mut compressor = Compressor::new(compression, Vec::new()).unwrap();
            compressor.write_all(&input).unwrap();
            crate::digest::Digest::of(&compressor.finish().unwrap()).to_string()
        };
        assert_eq!(
            compress(Compression::Gzip),
            "sha256:24f7db4e9d7950e767af855e4e85162e344f1829bdf52f1b90ffcce4c24cc2e2",
            "gzip bytes changed"
        );
        assert_eq!(
            compress(Compression::Zstd),
            "sha256:57ad644c4883c533c9e5951ca3361397bc4e2c9fd728e5e2f33bb028c1d96293",
            "zstd bytes changed"
        );
    }
}
