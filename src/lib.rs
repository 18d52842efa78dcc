//! dcfs: lossless, dtype-aware compression of model weights, served through a read-only
//! FUSE mount as the original files.
//!
//! Layers, each depending only on those above it in this list:
//! `codec` (raw/zstd/rANS) and `transform` (byte planes) → `chunk` (one chunk's payload)
//! → `model` (safetensors/GGUF headers) → `format` (the `.dcz` container) → `pack`
//! (trees: pack, unpack, verify, inspect) → `store` (cached reads of a packed tree) → `fs`
//! (the FUSE adaptor). `gpu` offloads rANS decoding; it uses `codec`, `chunk` and
//! `format`, and `pack` uses it. `quantize` (DC's lossy INT8 stage and `analyze`) uses
//! `model`/`chunk`/`codec`/`pack`; nothing depends on it.
//!
//! "DC" is "double compression", the method dcfs is named for: a lossy, compression-aware
//! INT8 stage (`quantize`) followed by the lossless, dtype-aware stage of every other
//! module. docs/ARCHITECTURE.md maps the layers, the read and pack paths, and how to add a
//! codec, a model format, a dtype or transform, or a CLI command.

// Symbol tables are indexed by symbol value; index loops say that more plainly.
#![allow(clippy::needless_range_loop)]
// Every unsafe block says why it is sound; clippy -D warnings makes a missing line an error.
#![warn(clippy::undocumented_unsafe_blocks)]

/// Declares a one-byte id enum as stored on disk: the variants with their ids and names,
/// `ALL` (every value, in declaration order), `from_id`, `name`, `Display` and
/// `TryFrom<u8>`. One list per enum, so an id, its name and its parse cannot drift apart.
macro_rules! id_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $var:ident = $id:literal => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        $vis enum $name {
            $( $(#[$vmeta])* $var = $id, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The value stored as `id`, if there is one.
            pub fn from_id(id: u8) -> ::core::option::Option<$name> {
                match id {
                    $( $id => ::core::option::Option::Some($name::$var), )+
                    _ => ::core::option::Option::None,
                }
            }

            /// The name shown by `inspect` and in messages.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$var => $label, )+
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::core::convert::TryFrom<u8> for $name {
            /// The unknown id.
            type Error = u8;
            fn try_from(id: u8) -> ::core::result::Result<$name, u8> {
                $name::from_id(id).ok_or(id)
            }
        }
    };
}

pub mod chunk;
pub mod codec;
pub mod error;
pub mod format;
pub mod fs;
pub mod gpu;
pub mod model;
pub mod pack;
pub mod quantize;
pub mod remote;
pub mod store;
pub mod transform;

pub use error::{Error, Result};

/// The unit tests' one deterministic RNG (xorshift64; no RNG crate). A zero seed is
/// taken as 1.
#[cfg(test)]
pub(crate) fn test_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.max(1);
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}
