package filters

// ConnAuthorizer is a filter that also polices opaque TCP connections,
// which carry no HTTP request: before relaying one, the proxy asks the
// inbound chain (Chain.AuthorizeConn), which asks each of its filters that
// implements ConnAuthorizer, and closes the connection if one refuses.
//
// AuthorizeConn returns nil when peer (the caller's SPIFFE ID, "" when the
// connection is not mTLS) may open the connection, else an error saying
// why not; the chain prefixes it with the filter's name. It must be safe
// for concurrent use.
type ConnAuthorizer interface {
	AuthorizeConn(peer string) error
}
