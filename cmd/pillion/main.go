// Command pillion is the one binary of the pillion mesh: each role is a
// subcommand, so one image serves the init container, the sidecar and the
// tools around them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one subcommand. run gets the arguments after the subcommand's
// name; it returns a usageError when the arguments are wrong, flag.ErrHelp
// when --help was asked for, and any other error otherwise.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// usageError is an error in how the command was called: bad flags or
// arguments. It exits with status 2 and points at --help.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// badUsage wraps err as a usageError.
func badUsage(err error) error { return usageError{err} }

// commands are the subcommands of this build: those that run in the
// application's pod always, the control plane's and the CLI's that need the
// Kubernetes API unless built with the tag lean (the sidecar image's
// binary, which then links no Kubernetes API machinery).
func commands() []command {
	return append([]command{
		{"init", "install the capture rules in this network namespace (the init container)", runInit},
		{"proxy", "run the sidecar proxy", runProxy},
		{"wait", "wait until the sidecar in this pod is ready (an application's postStart hook)", runWait},
		{"identity", "serve SPIFFE identities from a local CA on the Workload API (laptops, demos, tests)", runIdentity},
		{"version", "print the version", runVersion},
	}, kubeCommands()...)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand and turns its result into an exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, new(usageError)):
			fmt.Fprintf(stderr, "pillion %s: %v\n", c.name, err)
			fmt.Fprintf(stderr, "Run 'pillion %s --help' for usage.\n", c.name)
			return 2
		default:
			fmt.Fprintf(stderr, "pillion %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "pillion: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "pillion: a transparent sidecar proxy for Kubernetes.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: pillion <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'pillion <command> --help' for a command's flags.")
}

// newFlagSet returns a FlagSet that reports errors instead of exiting and
// prints its usage (summary, then flags) to w when asked with --help.
func newFlagSet(name, summary string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("pillion "+name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprintf(w, "Usage: pillion %s [flags]\n\n%s\n\nFlags:\n", name, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs. --help prints the usage and returns
// flag.ErrHelp; a bad flag is returned as a usageError, printed once by run
// with a pointer to --help rather than the whole usage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return err
	case err != nil:
		return badUsage(err)
	case fs.NArg() > 0:
		return badUsage(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	return nil
}
