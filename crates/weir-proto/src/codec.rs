//! The gRPC codec of every Weir service: prost, except that a request that is not valid
//! protobuf is `INVALID_ARGUMENT` (the client sent something wrong), not tonic's default
//! `INTERNAL` (which says Weir is broken and invites a retry of the same bytes).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// prost codec with malformed input mapped to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictProstCodec<T, U> {
    fn default() -> Self {
        StrictProstCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for StrictProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictProstDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, answering `INVALID_ARGUMENT` for bytes that are not a `U`.
#[derive(Debug, Clone)]
pub struct StrictProstDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed protobuf message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
