package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/pillionmesh/pillion/mtls"
	"github.com/pillionmesh/pillion/proxy"
)

// svidFlags are the proxy's flags that say where its identity comes from.
type svidFlags struct {
	fs                *flag.FlagSet
	socket            *string
	cert, key, bundle *string
}

func addSVIDFlags(fs *flag.FlagSet) *svidFlags {
	return &svidFlags{
		fs: fs,
		socket: fs.String("spiffe-socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"),
			"SPIFFE Workload API to take the SVID and trust bundle from (SPIRE agent, 'pillion identity'): a unix socket path or unix:///path; default $SPIFFE_ENDPOINT_SOCKET"),
		cert:   fs.String("svid-cert", "", "PEM file of the X.509-SVID (leaf first); with --svid-key and --svid-bundle instead of --spiffe-socket; re-read when it changes or on SIGHUP"),
		key:    fs.String("svid-key", "", "PEM file of the SVID's private key (PKCS#8)"),
		bundle: fs.String("svid-bundle", "", "PEM file of the trust domain's CA certificates"),
	}
}

// source returns the identity the flags name, nil for none (mTLS off).
// Flag errors are usage errors; files that do not load are too, naming the
// file. A Workload API that is not up yet is not an error: the proxy waits
// for it, not ready.
func (f *svidFlags) source(log *zap.Logger) (proxy.Identity, func(), error) {
	files := mtls.Files{Cert: *f.cert, Key: *f.key, Bundle: *f.bundle}
	anyFile := files.Cert != "" || files.Key != "" || files.Bundle != ""
	socketFlag := false // given as a flag, not only in the environment
	f.fs.Visit(func(fl *flag.Flag) { socketFlag = socketFlag || fl.Name == "spiffe-socket" })
	switch {
	case anyFile && socketFlag:
		return nil, nil, badUsage(errors.New("--spiffe-socket and --svid-cert/--svid-key/--svid-bundle: give one identity source, not both"))
	case anyFile:
		for _, m := range []struct{ flag, v string }{{"svid-cert", files.Cert}, {"svid-key", files.Key}, {"svid-bundle", files.Bundle}} {
			if m.v == "" {
				return nil, nil, badUsage(fmt.Errorf("--%s: missing: --svid-cert, --svid-key and --svid-bundle go together", m.flag))
			}
		}
		src, err := mtls.NewFileSource(files, 0, log)
		if err != nil {
			return nil, nil, badUsage(fmt.Errorf("--svid-cert, --svid-key, --svid-bundle: %w", err))
		}
		return src, func() { _ = src.Close() }, nil
	case *f.socket != "":
		src, err := mtls.NewWorkloadSource(*f.socket, log)
		if err != nil {
			return nil, nil, badUsage(fmt.Errorf("--spiffe-socket: %w", err))
		}
		return src, func() { _ = src.Close() }, nil
	}
	return nil, func() {}, nil
}
