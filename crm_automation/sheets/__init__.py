"""Sheet sources: CSV, Excel and Google Sheets."""
