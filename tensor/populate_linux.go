package tensor

import "syscall"

// populatePages maps the pages of b ahead of use (MADV_POPULATE_READ, Linux
// 5.14+; an older kernel refuses the advice and the pages fault in as read).
func populatePages(b []byte) { _ = syscall.Madvise(b, 22 /* MADV_POPULATE_READ */) }
