"""`lmforge plan`: will a run fit, and how fast will it go, before any weight is loaded or GPU rented."""
