"""The bad-input catalogue: every public function against wrong parameters and data."""
