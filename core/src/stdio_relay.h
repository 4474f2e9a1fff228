// `intersyncd --serve-stdio --fset FSET`: the remote end of the ssh
// transport. sshd runs it with the ssh channel as stdin and stdout; it finds
// the running daemon's listener for the server fileset FSET and relays bytes
// both ways until either side closes. The daemon stays the one owner of the
// fileset's state and authentication: the relay only carries the HTTP
// messages, as the CGI program does for a web server.
#pragma once

#include <string>
#include <utility>

#include "config.h"
#include "intersync/result.h"

namespace intersync {

// Where the running daemon serves `fset`: its configured listen address,
// reached on loopback when it is a wildcard (0.0.0.0, ::). A listener on
// port 0 (a port chosen at each start) is looked up over the control socket.
Result<std::pair<std::string, uint16_t>> stdio_relay_target(const Config& config,
                                                            const std::string& fset);

// Relays stdin to the daemon and the daemon to stdout; returns the exit
// status: 0 once either side closed, 1 (after a message on stderr) when the
// daemon cannot be reached. SIGPIPE must be ignored.
int serve_stdio(const Config& config, const std::string& fset);

}  // namespace intersync
