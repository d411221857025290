package spiretest

import "fmt"

// The configurations are SPIRE's own examples (conf/server/server.conf and
// conf/agent/agent.conf in the SPIRE repository) cut down to what a test
// needs, with two intervals shortened so that a new entry reaches the
// workload in about two seconds rather than ten:
//   - server experimental.cache_reload_interval (default 5s): how often the
//     server reloads the entries it hands to agents;
//   - agent experimental.sync_interval (default 5s): how often the agent
//     asks the server for its entries.
//
// Strings are written with %q: Go's quoting is valid HCL for the paths and
// names used here.

// serverConf is the configuration of s with its data in dataDir.
func serverConf(s *Server, dataDir string) string {
	return fmt.Sprintf(`server {
    bind_address = %q
    bind_port = "%d"
    socket_path = %q
    trust_domain = %q
    data_dir = %q
    log_level = "DEBUG"
    experimental {
        cache_reload_interval = "1s"
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`, s.Addr.Addr().String(), s.Addr.Port(), s.SocketPath, s.TrustDomain.Name(), dataDir, dataDir+"/datastore.sqlite3")
}

// agentConf is the configuration of agent a of server s, with its data in
// dataDir, attested with token. The agent trusts the bundle the server
// printed (trust_bundle_path), as in production, rather than bootstrapping
// insecurely.
func agentConf(s *Server, a *Agent, dataDir, token string) string {
	return fmt.Sprintf(`agent {
    data_dir = %q
    log_level = "DEBUG"
    server_address = %q
    server_port = "%d"
    socket_path = %q
    trust_bundle_path = %q
    trust_domain = %q
    join_token = %q
    experimental {
        sync_interval = "1s"
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`, dataDir, s.Addr.Addr().String(), s.Addr.Port(), a.SocketPath, s.BundlePath, s.TrustDomain.Name(), token)
}
