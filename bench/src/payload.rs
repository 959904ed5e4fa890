//! The object every benchmark writes: an `Image` padded to a fixed encoded size. etcd gets the
//! very same bytes as its value, so both stores carry the same payload.

use hanul_proto::v1::{Image, ImageSpec, Object, ObjectMeta};
use prost::Message as _;

/// An image named `name` whose encoded `Object` is `size` bytes (or the smallest it can be,
/// when `size` is below that).
pub fn image(name: &str, size: usize) -> Object {
    let mut object = build(name, String::new());
    let base = object.encoded_len();
    if size <= base {
        return object;
    }
    // The padding adds its own length prefix and the field tag; shrink it until the total fits.
    let mut pad = size - base;
    loop {
        object = build(name, "x".repeat(pad));
        let len = object.encoded_len();
        if len <= size || pad == 0 {
            return object;
        }
        pad -= (len - size).min(pad);
    }
}

fn build(name: &str, description: String) -> Object {
    Image {
        metadata: Some(ObjectMeta {
            name: name.to_string(),
            labels: [("app".to_string(), "hanul-bench".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(ImageSpec {
            command: vec!["/bin/sleep".into(), "infinity".into()],
            user: "nobody".into(),
            description,
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

/// The encoded bytes of [`image`], for stores that take opaque values.
pub fn image_bytes(name: &str, size: usize) -> Vec<u8> {
    image(name, size).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_padded_to_the_asked_size() {
        for size in [300, 512, 513, 1024] {
            assert_eq!(
                image("bench-c1-12345", size).encoded_len(),
                size,
                "size {size}"
            );
        }
    }

    #[test]
    fn a_size_below_the_minimum_gives_the_bare_image() {
        assert!(image("a", 10).encoded_len() > 10);
    }
}
