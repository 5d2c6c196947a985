"""Push providers behind one small interface (`base.PushProvider`), picked by platform."""
