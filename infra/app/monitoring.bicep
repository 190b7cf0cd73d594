// Application Insights for the Function App: where each run's summary (the "detector.summary" trace) and
// failures land. Local (instrumentation-key) authentication is off: telemetry is accepted only with an
// Entra token of the managed identity, which rbac.bicep grants Monitoring Metrics Publisher on this resource.

@description('Name of the Application Insights component.')
param name string

@description('Region of the component.')
param location string

@description('Tags for the component.')
param tags object = {}

@description('Resource id of the Log Analytics workspace that stores the telemetry.')
param workspaceResourceId string

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: name
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspaceResourceId
    DisableLocalAuth: true
    IngestionMode: 'LogAnalytics'
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

output name string = applicationInsights.name
output id string = applicationInsights.id
