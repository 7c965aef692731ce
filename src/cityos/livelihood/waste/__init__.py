"""垃圾分类 (waste sorting): residents' QR cards scanned at smart bins, deposits with their check result, a points
ledger that cannot be double-spent, a reward catalogue, and participation and accuracy per community."""
