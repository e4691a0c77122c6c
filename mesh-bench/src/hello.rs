//! The hello handler every configuration serves (the Greeter answers the same body over gRPC).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

/// The response every configuration returns.
pub(crate) const HELLO: &[u8] = b"hello world";

/// The handler: a fixed small body.
pub(crate) async fn hello<B>(_request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(HELLO))))
}
