//! The protobuf codec of our gRPC services: prost's, with a look at the wire bytes of every
//! request before they are decoded.
//!
//! Decoding can cost far more memory than the message: each string, bytes field or message in
//! a repeated field becomes a struct of 24 to 300 bytes, from as little as 2 bytes on the wire
//! (a 4 MiB ModelInfer of empty `inputs` would decode to 600 MB). So the decoder first counts
//! the length-delimited fields of the request, nested messages included, and refuses a request
//! with more than [`MAX_LENGTH_DELIMITED`] of them with INVALID_ARGUMENT before anything is
//! allocated. Numbers need no count: they grow at most 8-fold (a 1-byte varint into an i64),
//! which the message size limit bounds.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Strings, bytes fields and messages one request may hold, in all: 1,024 encoded images with
/// 1,024 ids take about 2,050.
pub const MAX_LENGTH_DELIMITED: usize = 8192;

/// Which fields of a message are messages themselves (by field number), and their layouts;
/// every other length-delimited field is a string, bytes or packed numbers.
#[derive(Debug)]
pub struct Layout(pub &'static [(u32, &'static Layout)]);

/// The layout the server checks before decoding a message it receives; None for the messages
/// it only sends (responses, decoded by clients).
pub trait WireLayout {
    const LAYOUT: Option<&'static Layout>;
}

/// Counts the length-delimited fields of `bytes` (a message of `layout`) into `seen`; fails
/// once the count passes [`MAX_LENGTH_DELIMITED`]. Malformed bytes end the count early: prost
/// refuses them right after.
fn count(bytes: &[u8], layout: &Layout, seen: &mut usize) -> Result<(), Status> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(key) = prost::encoding::decode_varint(&mut rest) else { return Ok(()) };
        let skip = match key & 7 {
            0 => match prost::encoding::decode_varint(&mut rest) {
                Ok(_) => 0,
                Err(_) => return Ok(()),
            },
            1 => 8,
            5 => 4,
            2 => {
                let Ok(len) = prost::encoding::decode_varint(&mut rest) else { return Ok(()) };
                let Some(field) = usize::try_from(len).ok().and_then(|len| rest.get(..len)) else { return Ok(()) };
                *seen += 1;
                if *seen > MAX_LENGTH_DELIMITED {
                    return Err(Status::invalid_argument(format!(
                        "the request holds more than {MAX_LENGTH_DELIMITED} strings, byte fields and \
                         messages; this server accepts at most that many per request"
                    )));
                }
                if let Some((_, inner)) = layout.0.iter().find(|(number, _)| u64::from(*number) == key >> 3) {
                    count(field, inner, seen)?;
                }
                field.len()
            }
            _ => return Ok(()),
        };
        if rest.len() < skip {
            return Ok(());
        }
        rest = &rest[skip..];
    }
    Ok(())
}

/// Checks `bytes`, a message of type `M`, before it is decoded.
pub fn check<M: WireLayout>(bytes: &[u8]) -> Result<(), Status> {
    match M::LAYOUT {
        Some(layout) => count(bytes, layout, &mut 0),
        None => Ok(()),
    }
}

/// [`tonic_prost::ProstCodec`] with [`check`] before each decode.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireLayout + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(ProstDecoder::default())
    }
}

/// The decoder of [`BoundedCodec`].
#[derive(Debug)]
pub struct BoundedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + WireLayout> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The whole message is in one contiguous buffer.
        check::<U>(prost::bytes::Buf::chunk(buf))?;
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Layouts of the messages the server receives.
mod layouts {
    use super::Layout;

    pub const LEAF: Layout = Layout(&[]);
    pub const IMAGES: Layout = Layout(&[(1, &LEAF), (2, &LEAF)]);
    pub const WITH_IMAGES: Layout = Layout(&[(1, &IMAGES)]);
    const PARAMETER_ENTRY: Layout = Layout(&[(2, &LEAF)]);
    const INPUT: Layout = Layout(&[(4, &PARAMETER_ENTRY), (5, &LEAF)]);
    const OUTPUT: Layout = Layout(&[(2, &PARAMETER_ENTRY)]);
    pub const MODEL_INFER: Layout = Layout(&[(4, &PARAMETER_ENTRY), (5, &INPUT), (6, &OUTPUT)]);
}

macro_rules! wire_layout {
    ($layout:expr => $($message:ty),+ $(,)?) => {
        $(impl WireLayout for $message {
            const LAYOUT: Option<&'static Layout> = $layout;
        })+
    };
}

use super::inference as oip;
use super::proto as pg;

wire_layout!(Some(&layouts::WITH_IMAGES) => pg::ScreenRequest, pg::AttackRequest);
wire_layout!(Some(&layouts::LEAF) => pg::GetInfoRequest);
wire_layout!(Some(&layouts::MODEL_INFER) => oip::ModelInferRequest);
wire_layout!(Some(&layouts::LEAF) =>
    oip::ServerLiveRequest, oip::ServerReadyRequest, oip::ModelReadyRequest,
    oip::ServerMetadataRequest, oip::ModelMetadataRequest,
);
wire_layout!(None =>
    pg::ScreenResponse, pg::AttackResponse, pg::GetInfoResponse,
    oip::ServerLiveResponse, oip::ServerReadyResponse, oip::ModelReadyResponse,
    oip::ServerMetadataResponse, oip::ModelMetadataResponse, oip::ModelInferResponse,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::inference::model_infer_request::InferInputTensor;
    use crate::service::proto::{images::Source, EncodedImages, Images, ScreenRequest};

    #[test]
    fn requests_with_too_many_fields_are_refused_before_decoding() {
        let files = |n: usize| ScreenRequest {
            images: Some(Images { source: Some(Source::Encoded(EncodedImages { files: vec![Vec::new(); n] })) }),
            ids: vec![String::new(); n],
            ..Default::default()
        };
        assert!(check::<ScreenRequest>(&files(1024).encode_to_vec()).is_ok());
        let status = check::<ScreenRequest>(&files(5000).encode_to_vec()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // Nested two levels down: the inputs of ModelInfer.
        let infer = |n: usize| oip::ModelInferRequest { inputs: vec![InferInputTensor::default(); n], ..Default::default() };
        assert!(check::<oip::ModelInferRequest>(&infer(1).encode_to_vec()).is_ok());
        assert!(check::<oip::ModelInferRequest>(&infer(MAX_LENGTH_DELIMITED + 1).encode_to_vec()).is_err());
        // Responses are not checked (the client decodes them).
        assert!(check::<pg::ScreenResponse>(&files(5000).encode_to_vec()).is_ok());
        // Malformed bytes end the count; prost refuses them.
        assert!(check::<ScreenRequest>(&[0x0a, 0xff, 0xff]).is_ok());
    }
}
