package handlers

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// allowList is the parsed EFFECTS_HTTP_ALLOW: the hosts http_request may
// reach. The zero value allows none.
type allowList struct {
	// hosts maps a normalised host (lower case; an IP address in its
	// canonical form, IPv6 without brackets) to the ports allowed on it.
	hosts map[string]allowedPorts
}

type allowedPorts struct {
	any   bool // a "host" entry: every port
	ports []int
}

// parseAllowList parses "host" and "host:port" entries. The error names the
// entry that is wrong.
func parseAllowList(entries []string) (allowList, error) {
	l := allowList{hosts: make(map[string]allowedPorts, len(entries))}
	for _, entry := range entries {
		host, port, err := parseAllowEntry(entry)
		if err != nil {
			return allowList{}, fmt.Errorf("entry %q: %w", entry, err)
		}
		p := l.hosts[host]
		if port == 0 {
			p.any = true
		} else {
			p.ports = append(p.ports, port)
		}
		l.hosts[host] = p
	}
	return l, nil
}

// parseAllowEntry parses one entry into a normalised host and a port (0 when
// the entry has none). It is strict on purpose: an entry that is not exactly
// a host, such as a URL, would otherwise silently allow nothing or, worse,
// something other than what the operator meant.
func parseAllowEntry(entry string) (host string, port int, err error) {
	s := strings.TrimSpace(entry)
	switch {
	case s == "":
		return "", 0, errors.New("empty entry")
	case strings.Contains(s, "://"):
		return "", 0, errors.New("want host or host:port, not a URL: drop the scheme")
	case strings.ContainsAny(s, "/?#@"):
		return "", 0, errors.New("want host or host:port, without a path, query or user")
	}
	var portText string
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0, errors.New("missing ] after the IPv6 address")
		}
		inner, rest := s[1:end], s[end+1:]
		if rest != "" {
			var ok bool
			if portText, ok = strings.CutPrefix(rest, ":"); !ok {
				return "", 0, errors.New("want [IPv6] or [IPv6]:port")
			}
		}
		addr, err := netip.ParseAddr(inner)
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", 0, errors.New("brackets must hold an IPv6 address without a zone, as in [::1]")
		}
		s = addr.String()
	} else {
		switch strings.Count(s, ":") {
		case 0:
		case 1:
			s, portText, _ = strings.Cut(s, ":")
		default:
			return "", 0, errors.New("an IPv6 address must be in brackets, as in [::1] or [::1]:8080")
		}
		// Host names are case-insensitive; URLs are compared in lower case.
		s = strings.ToLower(s)
		if err := checkHostName(s); err != nil {
			return "", 0, err
		}
		if addr, err := netip.ParseAddr(s); err == nil {
			if addr.Is6() {
				return "", 0, errors.New("an IPv6 address must be in brackets, as in [::1] or [::1]:8080")
			}
			s = addr.String()
		}
	}
	if portText != "" || strings.HasSuffix(entry, ":") {
		if port, err = parsePort(portText); err != nil {
			return "", 0, err
		}
	}
	return s, port, nil
}

// checkHostName accepts a DNS name or an IPv4 address in ASCII: labels of
// letters, digits, '-' and '_' (common in internal service names), separated
// by single dots. Wildcards and internationalised names (write them in
// punycode) are not accepted.
func checkHostName(s string) error {
	if s == "" {
		return errors.New("empty host")
	}
	if len(s) > 253 {
		return errors.New("host name longer than 253 characters")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" {
			return fmt.Errorf("host %q has an empty label (a leading, trailing or double dot)", s)
		}
		if len(label) > 63 {
			return fmt.Errorf("host %q has a label longer than 63 characters", s)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("host %q has the character %q; want letters, digits, '-', '_' and '.' (punycode for international names)", s, c)
			}
		}
	}
	return nil
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return n, nil
}

// check returns the reason u may not be requested, nil when it may. what
// says which URL it is ("host", "redirect to host") for the message.
//
// It looks at the URL exactly as the transport will dial it (u.Host), so that
// what is checked is what is reached.
func (l allowList) check(u *url.URL, what string) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("http_request: %s %q: scheme %q is not http or https", what, u.Host, u.Scheme)
	}
	host, port, err := urlHostPort(u)
	if err != nil {
		return fmt.Errorf("http_request: %s %q: %w", what, u.Host, err)
	}
	if l.allows(host, port) {
		return nil
	}
	if len(l.hosts) == 0 {
		return fmt.Errorf("http_request: %s %q is not in %s (it is empty, so no host is allowed)", what, u.Host, EnvHTTPAllow)
	}
	return fmt.Errorf("http_request: %s %q is not in %s", what, u.Host, EnvHTTPAllow)
}

func (l allowList) allows(host string, port int) bool {
	p, ok := l.hosts[host]
	if !ok {
		return false
	}
	if p.any {
		return true
	}
	for _, allowed := range p.ports {
		if allowed == port {
			return true
		}
	}
	return false
}

// urlHostPort returns u's host, normalised as allow-list entries are, and its
// port, the scheme's default when u has none.
func urlHostPort(u *url.URL) (string, int, error) {
	host := u.Hostname()
	if host == "" {
		return "", 0, errors.New("no host")
	}
	for i := 0; i < len(host); i++ {
		// The transport maps international names through IDNA, which folds
		// look-alike characters; comparing only ASCII names keeps what is
		// checked and what is dialled the same.
		if host[i] >= 0x80 {
			return "", 0, errors.New("host is not ASCII; write international names in punycode")
		}
	}
	host = strings.ToLower(host)
	if addr, err := netip.ParseAddr(host); err == nil {
		// One address has many spellings ([::1], [0:0::1]); compare one.
		host = addr.String()
	}
	portText := u.Port()
	if portText == "" {
		if u.Scheme == "https" {
			return host, 443, nil
		}
		return host, 80, nil
	}
	port, err := parsePort(portText)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}
