import Foundation
import MNC

// SIGPIPE would end the process silently when a reader such as `head` closes the pipe early;
// ignoring it turns that into a write error, reported below.
signal(SIGPIPE, SIG_IGN)
setvbuf(stdout, nil, _IOFBF, 1 << 16)
var status = runCommandLine(Array(CommandLine.arguments.dropFirst()))
if fflush(stdout) != 0 || ferror(stdout) != 0 {
    fputs("error: cannot write the output: \(String(cString: strerror(errno)))\n", stderr)
    status = 1
}
exit(status)
