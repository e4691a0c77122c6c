//! Route matching: which of a destination's routes a request takes.
//!
//! Routes are tried in order and the first whose [`RouteMatch`] holds wins: path (exact, or
//! prefix segment by segment), method, and every header condition (exact, present, regex). A
//! destination without routes sends every request to every endpoint; a destination with routes
//! of which none matches refuses the request with [`NoRoute`](super::NoRoute) (the mesh's 404).

use http::Request;
use mesh_core::{Route, RouteMatch};

/// Whether `request` satisfies `matches`.
pub(crate) fn matches<B>(matches: &RouteMatch, request: &Request<B>) -> bool {
    if let Some(path) = &matches.path
        && !path.matches(request.uri().path())
    {
        return false;
    }
    if let Some(method) = &matches.method
        && method.as_str() != request.method().as_str()
    {
        return false;
    }
    matches.headers.iter().all(|h| h.matches_value(request.headers().get(h.name.as_str()).map(|v| v.as_bytes())))
}

/// The index of the first route `request` takes.
pub fn select<B>(routes: &[Route], request: &Request<B>) -> Option<usize> {
    routes.iter().position(|route| matches(&route.matches, request))
}

#[cfg(test)]
mod tests {
    use mesh_core::{HeaderMatch, Method, PathMatch, RouteName};

    use super::*;

    fn route(name: &str, m: RouteMatch) -> Route {
        Route::new(RouteName::new(name).unwrap()).with_match(m)
    }

    #[test]
    fn first_match_wins() {
        let routes = vec![
            route(
                "canary-testers",
                RouteMatch::any().header(HeaderMatch::regex("x-user".parse().unwrap(), "^qa-").unwrap()),
            ),
            route("writes", RouteMatch::any().method(Method::post()).path(PathMatch::prefix("/reviews").unwrap())),
            route("health", RouteMatch::any().path(PathMatch::exact("/healthz").unwrap())),
            route("reads", RouteMatch::any().path(PathMatch::prefix("/reviews").unwrap())),
        ];
        let req = |method: &str, path: &str, user: Option<&str>| {
            let mut b = Request::builder().method(method).uri(path);
            if let Some(u) = user {
                b = b.header("x-user", u);
            }
            b.body(()).unwrap()
        };
        assert_eq!(select(&routes, &req("GET", "/reviews/1", Some("qa-7"))), Some(0));
        assert_eq!(select(&routes, &req("GET", "/reviews/1", Some("bob"))), Some(3));
        assert_eq!(select(&routes, &req("POST", "/reviews", None)), Some(1));
        assert_eq!(select(&routes, &req("GET", "/healthz", None)), Some(2));
        assert_eq!(select(&routes, &req("GET", "/reviewsx", None)), None);
        assert_eq!(select(&routes, &req("GET", "/healthz/x", None)), None);
    }
}
