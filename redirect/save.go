package redirect

import (
	"errors"
	"regexp"
	"strings"
)

// NormalizeSave makes iptables-save output comparable with Plan.Save: it
// drops the "#" lines (they carry a timestamp) and sets every packet and
// byte counter to zero, on chain lines (":OUTPUT ACCEPT [12:720]") and in
// front of rules ("[12:720] -A ...", from iptables-save -c). Every line,
// the last included, ends in a newline.
func NormalizeSave(save string) string {
	var b strings.Builder
	for line := range strings.Lines(save) {
		line = strings.TrimRight(line, "\r\n")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = ruleCounters.ReplaceAllString(line, "")
		line = chainCounters.ReplaceAllString(line, "[0:0]")
		b.WriteString(line + "\n")
	}
	return b.String()
}

var (
	chainCounters = regexp.MustCompile(`\[\d+:\d+\]$`)
	ruleCounters  = regexp.MustCompile(`^\[\d+:\d+\] `)
)

// quote renders a string argument the way iptables-save does
// (xtables_save_string): bare if it is made of letters, digits, "_" and
// "-" only, otherwise in double quotes with `"`, `\` and `'` escaped.
func quote(s string) string {
	if s != "" && strings.Trim(s, "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == "" {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r == '"' || r == '\\' || r == '\'' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// splitRule splits a line of iptables -S output into arguments, undoing
// quote: it is what iptables-restore does with a rule line.
func splitRule(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inArg   bool // cur holds an argument, possibly empty ("")
		quoted  bool
		escaped bool
	)
	for _, r := range line {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case quoted && r == '\\':
			escaped = true
		case r == '"':
			quoted = !quoted
			inArg = true
		case !quoted && (r == ' ' || r == '\t'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if quoted || escaped {
		return nil, errors.New("unterminated quote")
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// listedRule is one "-A CHAIN ..." line read from the kernel.
type listedRule struct {
	text string   // as listed
	spec []string // the arguments after "-A CHAIN"
}

// pillions reports whether the rule carries pillion's comment.
func (r listedRule) pillions() bool {
	for i := 0; i+1 < len(r.spec); i++ {
		if r.spec[i] == "--comment" && strings.HasPrefix(r.spec[i+1], CommentPrefix) {
			return true
		}
	}
	return false
}

// parseListing turns iptables -S CHAIN output into its rules, skipping the
// "-P" or "-N" line that declares the chain.
func parseListing(chain string, lines []string) ([]listedRule, error) {
	var rules []listedRule
	for _, line := range lines {
		args, err := splitRule(line)
		if err != nil {
			return nil, errors.New("cannot parse listed rule " + line + ": " + err.Error())
		}
		if len(args) < 2 || args[1] != chain {
			return nil, errors.New("unexpected line in listing of " + chain + ": " + line)
		}
		if args[0] != "-A" {
			continue
		}
		rules = append(rules, listedRule{text: line, spec: args[2:]})
	}
	return rules, nil
}
