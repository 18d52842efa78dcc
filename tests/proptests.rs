//! Property tests: any bytes round-trip through rANS and the chunk codecs, and any
//! well-formed safetensors header parses to exactly the tensors it declares while
//! arbitrary bytes never panic the parsers.

use proptest::prelude::*;

use dcfs::chunk::{self, CodecChoice, EncodeOptions};
use dcfs::codec::rans;
use dcfs::model::{gguf, safetensors};
use dcfs::transform::Transform;

/// Byte vectors with skewed distributions (few symbols, one dominant) as well as uniform.
fn skewed_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..5000),
        proptest::collection::vec(0u8..4, 0..70_000),
        (
            any::<u8>(),
            proptest::collection::vec((0u32..1000, any::<u8>()), 0..300),
            1usize..140_000
        )
            .prop_map(|(fill, pokes, len)| {
                let mut v = vec![fill; len];
                for (i, b) in pokes {
                    let at = i as usize * len / 1000;
                    v[at] = b;
                }
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rans_roundtrips_any_bytes(data in skewed_bytes()) {
        let mut enc = Vec::new();
        rans::encode(&data, &mut enc);
        let mut out = vec![0u8; data.len()];
        rans::decode(&enc, &mut out).unwrap();
        prop_assert_eq!(out, data);
    }

    #[test]
    fn chunks_roundtrip_under_every_transform(data in skewed_bytes(), t in 0..Transform::ALL.len(), codec in 0usize..3) {
        let t = Transform::ALL[t];
        let len = data.len() / t.unit() * t.unit();
        let data = &data[..len];
        let opt = EncodeOptions { codec: [CodecChoice::Auto, CodecChoice::Rans, CodecChoice::Zstd][codec], ..Default::default() };
        let e = chunk::encode(data, &[t], true, &opt);
        let mut out = vec![0u8; data.len()];
        chunk::decode(e.codec, e.transform, &e.payload, &mut out).unwrap();
        prop_assert_eq!(&out[..], data);
    }

    #[test]
    fn safetensors_headers_parse_to_what_they_declare(
        tensors in proptest::collection::vec((0usize..6, proptest::collection::vec(0u64..7, 0..4)), 0..12)
    ) {
        let dtypes = ["F32", "BF16", "I8", "F16", "I64", "F8_E4M3"];
        let sizes = [4u64, 2, 1, 2, 8, 1];
        let owned: Vec<(String, &str, Vec<u64>, Vec<u8>)> = tensors
            .iter()
            .enumerate()
            .map(|(i, (d, shape))| {
                let n: u64 = shape.iter().product::<u64>() * sizes[*d];
                (format!("t{i}"), dtypes[*d], shape.clone(), vec![i as u8; n as usize])
            })
            .collect();
        let refs: Vec<(&str, &str, Vec<u64>, Vec<u8>)> =
            owned.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone())).collect();
        let f = safetensors::build(&refs);
        let l = safetensors::parse(&f, f.len() as u64).unwrap();
        prop_assert_eq!(l.tensors.len(), owned.len());
        for t in &l.tensors {
            let i: usize = t.name[1..].parse().unwrap();
            prop_assert_eq!(t.len as usize, owned[i].3.len());
            prop_assert!(f[t.start as usize..(t.start + t.len) as usize].iter().all(|&b| b == i as u8));
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600), extra in 0u64..1000) {
        let _ = safetensors::parse(&data, data.len() as u64 + extra);
        let mut g = b"GGUF\x03\0\0\0".to_vec();
        g.extend_from_slice(&data);
        let _ = gguf::parse(&g, g.len() as u64 + extra);
        let mut out = vec![0u8; (extra as usize) * 8];
        let _ = rans::decode(&data, &mut out);
    }
}
